"""``vouch policy check``: the admission engine for CI/CD pipelines.

Reads the same YAML documents the webhook enforces (Portieris' CRDs or
vouch's, plus Secrets for signer keys), decides for each image and exits 0
only if every image is allowed, so a pipeline step can gate a deploy.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click


@click.group("policy")
def policy() -> None:
    """Check images against admission policies."""


@policy.command("check")
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--policy",
    "policy_files",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML file(s) with ImagePolicy/ClusterImagePolicy documents and Secrets.",
)
@click.option("-n", "--namespace", default=None, help="Namespace whose ImagePolicies apply.")
@click.option("--trust-server", default=None, help="Trust server for registries without one.")
@click.option("--json", "as_json", is_flag=True, help="Print decisions as JSON.")
def check(
    images: tuple[str, ...],
    policy_files: tuple[Path, ...],
    namespace: str | None,
    trust_server: str | None,
    as_json: bool,
) -> None:
    """Allow or deny each IMAGE; exit 0 only if all are allowed."""
    from vouch.admission.engine import Engine
    from vouch.admission.policy import PolicyError, load_policies

    try:
        policies = load_policies("\n---\n".join(p.read_text() for p in policy_files))
    except (PolicyError, OSError) as exc:
        raise click.ClickException(f"cannot load policies: {exc}") from exc

    async def decide() -> list[dict[str, object]]:
        engine = Engine(policies, default_trust_server=trust_server)
        try:
            unique = list(dict.fromkeys(images))
            results = await asyncio.gather(*(engine.check(i, namespace) for i in unique))
            return [r.to_dict() for r in results]
        finally:
            await engine.aclose()

    decisions = asyncio.run(decide())
    if as_json:
        click.echo(json.dumps({"decisions": decisions}, indent=2))
    else:
        for d in decisions:
            verdict = "ALLOW" if d["allowed"] else "DENY "
            click.echo(f"{verdict} {d['image']}")
            if d["pinned"]:
                click.echo(f"      pinned: {d['pinned']}")
            for reason in [*d["reasons"], *d["warnings"]]:  # type: ignore[misc]
                click.echo(f"      {reason}")
    raise SystemExit(0 if all(d["allowed"] for d in decisions) else 1)
