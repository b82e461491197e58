"""``vouch cert list``: the root certificates this trust dir trusts, and when they expire.

notary 0.7 dropped its ``cert`` command; this one reads the cached (already
verified) ``root.json`` of every repository in the trust dir, offline. An
expired root certificate bricks a repository (spec §11.29), so the point
is to see expiry coming: renew with ``vouch key rotate <gun> root``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vouch.cli.errors import CLIError
from vouch.cli.options import GlobalOptions, client_command, json_option, pass_options
from vouch.cli.output import emit_json, print_table


@click.group("cert", context_settings={"help_option_names": ["-h", "--help"]})
def cert_group() -> None:
    """Shows root certificates of the repositories in the trust dir."""


def _cached_guns(trust_dir: Path) -> list[str]:
    tuf = trust_dir / "tuf"
    if not tuf.is_dir():
        return []
    found = (p.parent.parent for p in tuf.rglob("metadata/root.json"))
    return sorted(p.relative_to(tuf).as_posix() for p in found)


def root_certificates(trust_dir: Path, gun: str) -> list[dict[str, Any]]:
    """One entry per certificate key of ``gun``'s cached root role."""
    from cryptography import x509

    from vouch.tuf.metadata import Metadata, Root

    path = trust_dir / "tuf" / gun / "metadata" / "root.json"
    if not path.is_file():
        raise CLIError(f"no cached trust data for {gun} (run 'vouch list {gun}' first)")
    data = path.read_bytes()
    root: Metadata[Root] = Metadata.from_bytes(data, Root)
    out = []
    for key_id, key in root.signed.role_keys("root").items():
        certs = key.certificates()
        if not certs:
            continue
        leaf = certs[0]
        names = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        out.append(
            {
                "gun": gun,
                "cn": str(names[0].value) if names else "",
                "key_id": key_id,
                "canonical_key_id": key.canonical_keyid(),
                "expires": leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "root_version": root.signed.version,
            }
        )
    return out


@client_command(cert_group, "list")
@click.argument("gun", required=False)
@json_option
@pass_options
def cert_list(options: GlobalOptions, gun: str | None, as_json: bool) -> None:
    """Lists the root certificates of cached repositories (all, or GUN's)."""
    from vouch.client.config import check_gun

    trust_dir = options.session().trust_dir
    guns = [check_gun(gun)] if gun else _cached_guns(trust_dir)
    entries = [e for g in guns for e in root_certificates(trust_dir, g)]
    if as_json:
        emit_json(entries)
        return
    if not entries:
        click.echo("\nNo root certificates cached in this trust dir.\n")
        return
    rows = [[e["gun"], e["cn"], e["key_id"], e["expires"]] for e in entries]
    print_table(["GUN", "CN", "KEY ID", "EXPIRES"], rows)
