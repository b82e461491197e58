"""The admission webhook's HTTP side: ``POST /admit`` (AdmissionReview v1),
liveness (``/healthz``), readiness (``/readyz``: policies loaded), and
Prometheus metrics (decisions by result and reason, latency, trust-data
cache hits and misses, trust-server errors)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vouch.admission.webhook import Reviewer

log = logging.getLogger("vouch.admission")
MAX_REVIEW_BYTES = 8 * 1024 * 1024


class EngineCounters(Collector):
    """The engine's running counts, exported as counters when scraped (the
    engine keeps plain integers; it is shared with ``vouch policy check``)."""

    def __init__(self, reviewer: Reviewer) -> None:
        self.reviewer = reviewer

    def collect(self) -> Iterator[Metric]:
        engine = self.reviewer.engine
        for name, doc, value in (
            ("vouch_admission_trust_cache_hits", "Trust-data cache hits", engine.cache_hits),
            ("vouch_admission_trust_cache_misses", "Trust-data cache misses", engine.cache_misses),
            (
                "vouch_admission_trust_server_errors",
                "Trust data that could not be fetched (server down, HTTP or TLS errors)",
                engine.trust_errors,
            ),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], value)
            yield family


def build_admission_app(reviewer: Reviewer) -> Starlette:
    registry = CollectorRegistry()
    decisions = Counter(
        "vouch_admission_decisions",
        "Admission decisions by result (allow, deny) and reason",
        ["result", "reason"],
        registry=registry,
    )
    latency = Histogram(
        "vouch_admission_review_duration_seconds",
        "Time to answer an AdmissionReview",
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )
    registry.register(EngineCounters(reviewer))

    def observe(allowed: bool, reason: str, seconds: float) -> None:
        decisions.labels("allow" if allowed else "deny", reason).inc()
        latency.observe(seconds)

    reviewer.observe = observe

    async def admit(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_REVIEW_BYTES:
            return JSONResponse({"error": "AdmissionReview too large"}, status_code=413)
        try:
            review = json.loads(body)
            result = await reviewer.review(review)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": f"bad AdmissionReview: {exc}"}, status_code=400)
        if not result.allowed:
            log.info("deny %s: %s", result.uid, "; ".join(result.messages))
        return JSONResponse(result.response())

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> Response:
        """Readiness: the policies are loaded (a cluster's first complete list)."""
        if reviewer.ready is not None and not reviewer.ready.is_set():
            return JSONResponse({"status": "policies not loaded yet"}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/admit", admit, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
            Route("/readyz", ready, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )
