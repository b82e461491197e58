"""``vouch admission``: serve the admission webhook."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("admission")
@click.option("--listen", default="0.0.0.0:8443", show_default=True)
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--plain-http", is_flag=True, help="Serve without TLS (tests and local runs only).")
@click.option(
    "--policy",
    "policy_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Policies from YAML files (config-map mode).",
)
@click.option(
    "--kubernetes", is_flag=True, help="Watch policies and their Secrets through the API server."
)
@click.option(
    "--kube-api",
    default=None,
    help="API server URL, to run outside the cluster (with --kube-token-file and --kube-ca-file); "
    "default: the in-cluster service account.",
)
@click.option(
    "--kube-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Bearer token file (re-read when it changes).",
)
@click.option(
    "--kube-ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CA certificate of the API server.",
)
@click.option(
    "--watch-timeout",
    default=300,
    show_default=True,
    type=click.IntRange(10, 3600),
    help="Seconds the API server keeps one watch open before it is re-opened.",
)
@click.option(
    "--missing-crd-retry",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    help="Seconds between lists of a policy CRD that is not installed.",
)
@click.option(
    "--deadline",
    default=8.0,
    show_default=True,
    help="Internal deadline (s), below the webhook timeout.",
)
@click.option("--cache-ttl", default=30.0, show_default=True, help="Trust-data cache TTL (s).")
@click.option("--trust-server", default=None, help="Trust server for registries without one.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
def admission(
    listen: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    plain_http: bool,
    policy_files: tuple[Path, ...],
    kubernetes: bool,
    kube_api: str | None,
    kube_token_file: Path | None,
    kube_ca_file: Path | None,
    watch_timeout: int,
    missing_crd_retry: float,
    deadline: float,
    cache_ttl: float,
    trust_server: str | None,
    cache_dir: Path | None,
) -> None:
    """Run the admission webhook (AdmissionReview v1 on POST /admit)."""
    import asyncio
    import logging

    import uvicorn

    from vouch.admission.app import build_admission_app
    from vouch.admission.cluster import PolicyWatcher
    from vouch.admission.engine import Engine
    from vouch.admission.kube import KubeClient
    from vouch.admission.policy import PolicyError, PolicySet, load_policies
    from vouch.admission.webhook import Reviewer
    from vouch.server.main import split_listen

    if not policy_files and not kubernetes:
        raise click.UsageError("give --policy FILE or --kubernetes")
    outside = (kube_api, kube_token_file, kube_ca_file)
    if any(outside) and not (kubernetes and all(outside)):
        raise click.UsageError(
            "--kube-api, --kube-token-file and --kube-ca-file go together, with --kubernetes"
        )
    if not plain_http and (tls_cert is None or tls_key is None):
        raise click.UsageError("give --tls-cert and --tls-key (or --plain-http for local runs)")
    try:
        policies = (
            load_policies("\n---\n".join(p.read_text() for p in policy_files))
            if policy_files
            else PolicySet()
        )
    except (PolicyError, OSError) as exc:
        raise click.ClickException(f"cannot load policies: {exc}") from exc
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

    async def serve() -> None:
        engine = Engine(
            policies, cache_dir=cache_dir, cache_ttl=cache_ttl, default_trust_server=trust_server
        )
        kube = None
        if kube_api and kube_token_file and kube_ca_file:
            kube = KubeClient.from_files(kube_api, kube_token_file, kube_ca_file)
        elif kubernetes:
            kube = KubeClient.in_cluster()
        reviewer = Reviewer(engine, owners=kube, secrets=kube, deadline=deadline)
        if kube is not None:

            def apply(fresh: PolicySet) -> None:
                engine.policies = fresh

            # Served from the start (liveness), ready once the first lists are
            # complete; reviews before that wait within the deadline.
            watcher = PolicyWatcher(
                kube, apply, watch_timeout=watch_timeout, missing_retry=missing_crd_retry
            )
            reviewer.ready = watcher.ready
            watcher.start()
        app = build_admission_app(reviewer)
        host, port = split_listen(listen)
        config = uvicorn.Config(app, host=host, port=port, access_log=False, lifespan="off")
        if not plain_http:
            from vouch.server.devtls import ReloadingSSLContext

            assert tls_cert is not None and tls_key is not None
            reloading = ReloadingSSLContext(tls_cert, tls_key)
            config.load()
            config.ssl = reloading.context
        await uvicorn.Server(config).serve()

    asyncio.run(serve())
