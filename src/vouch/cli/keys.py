"""``vouch key …``: the private keys in ``<trust dir>/private``, as ``notary key`` manages them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import click

from vouch.cli.errors import CLIError
from vouch.cli.options import GlobalOptions, client_command, json_option, pass_options, split_list
from vouch.cli.output import emit_json, print_table, write_bytes
from vouch.cli.prompts import confirm

if TYPE_CHECKING:
    from vouch.crypto.keystore import KeyInfo

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_KEY_ID = re.compile(r"[0-9a-f]{64}\Z")
ALGORITHMS = ("ecdsa", "ed25519", "rsa")
BASE_ROTATABLE = ("targets", "snapshot", "timestamp")
MAX_GUN_WIDTH, MAX_LOC_WIDTH = 25, 40  # notary truncates these columns


@click.group("key", context_settings={"help_option_names": ["-h", "--help"]})
def key_group() -> None:
    """Operates on keys."""


def _left_truncate(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[len(text) - (width - 3) :]


def _sort_key(info: KeyInfo) -> tuple[bool, str, str, str]:
    """notary's order: root keys first, then by GUN, role and key ID."""
    return (info.role != "root", info.gun, info.role, info.keyid)


@client_command(key_group, "list")
@json_option
@pass_options
def key_list(options: GlobalOptions, as_json: bool) -> None:
    """Lists keys."""
    store = options.session().keystore()
    infos = sorted(store.list_keys(), key=_sort_key)
    location = str(store.private_dir)

    def where(info: KeyInfo) -> str:
        return location if info.token is None else f"pkcs11:{info.token}"

    if as_json:
        emit_json(
            [
                {
                    "role": i.role,
                    "gun": i.gun,
                    "key_id": i.keyid,
                    "location": where(i),
                    "file": str(i.path),
                    "encrypted": i.encrypted,
                }
                for i in infos
            ]
        )
        return
    click.echo()
    if not infos:
        click.echo("No signing keys found.\n")
        return
    rows = [
        [
            i.role,
            _left_truncate(i.gun, MAX_GUN_WIDTH),
            i.keyid,
            _left_truncate(where(i), MAX_LOC_WIDTH),
        ]
        for i in infos
    ]
    print_table(["ROLE", "GUN", "KEY ID", "LOCATION"], rows)
    click.echo()


def _object_id(value: str | None) -> bytes | None:
    """``--pkcs11-id``'s hex as bytes."""
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise CLIError(f"--pkcs11-id {value!r} is not hex") from None
    if not raw:
        raise CLIError("--pkcs11-id must not be empty")
    return raw


@client_command(key_group, "generate")
@click.argument("algorithm", required=False, default="ecdsa")
@click.option("-r", "--role", default="root", show_default=True, help="Role of the new key.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write <output>.pem (public) and <output>-key.pem (private) instead of storing it.",
)
@click.option(
    "--hsm",
    is_flag=True,
    help="Generate the key on a PKCS#11 token (ecdsa); -o then writes only <output>.pem.",
)
@click.option(
    "--pkcs11-id",
    "object_id",
    metavar="HEX",
    help="With --hsm: use the token's key pair with this CKA_ID, or make it there "
    "(ykcs11: the PIV slot, e.g. 02 for 9c).",
)
@pass_options
def key_generate(
    options: GlobalOptions,
    algorithm: str,
    role: str,
    output: Path | None,
    hsm: bool,
    object_id: str | None,
) -> None:
    """Generates a new key (ecdsa by default; vouch also makes ed25519 and rsa)."""
    from vouch.cli.keyio import public_pem, public_pem_of, write_private
    from vouch.crypto.keyfile import encode_key_file
    from vouch.crypto.privkey import PrivateKey

    algorithm = algorithm.lower()
    if algorithm not in ALGORITHMS:
        raise CLIError(f"Algorithm not allowed, possible values are: {', '.join(ALGORITHMS)}")
    if object_id is not None and not hsm:
        raise CLIError("--pkcs11-id needs --hsm")
    if hsm:
        if algorithm != "ecdsa":
            raise CLIError("keys on a PKCS#11 token are ecdsa (P-256)")
        raw_id = _object_id(object_id)
        ref = options.session().keystore().generate_on_token(role, object_id=raw_id)
        if output is not None:
            write_private(output.with_name(output.name + ".pem"), public_pem_of(ref.public, role))
        click.echo(
            f"Generated new {algorithm} {role} key with keyID: {ref.keyid}"
            f" (on PKCS#11 token {ref.token_label or '?'})"
        )
        return
    key = PrivateKey.generate(algorithm)
    session = options.session()
    if output is None:
        session.keystore().save(key, role)
    else:
        passphrase = session.retriever(key.keyid, role, True, 0)
        if not passphrase:
            raise CLIError("no password provided")
        # Unlike notary's, with a ``path`` header: notary can only import an encrypted
        # key whose bundle names its key ID.
        pem = encode_key_file(key, passphrase, role=role, path=key.keyid)
        write_private(output.with_name(output.name + "-key.pem"), pem)
        write_private(output.with_name(output.name + ".pem"), public_pem(key, role))
    click.echo(f"Generated new {algorithm} {role} key with keyID: {key.keyid}")


@client_command(key_group, "rotate")
@click.argument("gun")
@click.argument("role")
@click.option(
    "-r",
    "--server-managed",
    is_flag=True,
    help="The server holds the new key (required for timestamp, optional for snapshot).",
)
@click.option("-k", "--key", "key_files", multiple=True, type=_FILE, help="New root key file.")
@click.option("-l", "--legacy", type=int, default=0, help="Not supported by vouch yet.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before rotating the root key.")
@click.option(
    "--hsm", is_flag=True, help="Root only: make the new root key on a PKCS#11 token (ecdsa)."
)
@click.option(
    "--pkcs11-id",
    "object_id",
    metavar="HEX",
    help="With --hsm: use the token's key pair with this CKA_ID, or make it there.",
)
@pass_options
def key_rotate(
    options: GlobalOptions,
    gun: str,
    role: str,
    server_managed: bool,
    key_files: tuple[Path, ...],
    legacy: int,
    yes: bool,
    hsm: bool,
    object_id: str | None,
) -> None:
    """Rotates the key of a role (root, targets, snapshot or timestamp) and publishes."""
    if legacy:
        raise CLIError("--legacy (signing with old root versions) is not supported by vouch yet")
    if object_id is not None and not hsm:
        raise CLIError("--pkcs11-id needs --hsm")
    if hsm and role != "root":
        raise CLIError("--hsm rotates the root key onto a token; other roles stay in files")
    session = options.session()
    if role == "root":
        if server_managed:
            raise CLIError("the root key cannot be server-managed")
        if len(key_files) > 1:
            raise CLIError("vouch rotates root to exactly one key; give at most one --key")
        if hsm and key_files:
            raise CLIError("--hsm makes the new root key on the token: it cannot take --key")
        raw_id = _object_id(object_id)
        key_id = None
        if key_files:
            from vouch.cli.keyio import read_private_key

            key = read_private_key(key_files[0], "root", session.retriever)
            session.keystore().save(key, "root")
            key_id = key.keyid
        click.echo(
            "Warning: you are about to rotate your root key.\n\n"
            "You must use your old key to sign this root rotation.",
            err=True,
        )
        if not yes and not confirm("Are you sure you want to proceed?"):
            click.echo("\nAborting action.")
            return
        session.run(gun, lambda repo: repo.rotate_root(key_id=key_id, hsm=hsm, object_id=raw_id))
    elif role in BASE_ROTATABLE:
        if key_files:
            raise CLIError("--key is supported for the root role only (vouch generates the key)")
        if role == "targets" and server_managed:
            raise CLIError("the targets key cannot be server-managed")
        staged = session.offline(gun).changelist.names()
        if staged:
            raise CLIError(
                f"{gun} has {len(staged)} unpublished change(s): publish or reset them "
                "before rotating a key (the rotation is published at once)"
            )
        session.run(gun, lambda repo: repo.rotate_key(role, server_managed=server_managed))
    else:
        raise CLIError(
            f"cannot rotate {role!r}: choose root, targets, snapshot or timestamp "
            "(delegation keys change with 'delegation add/remove')"
        )
    click.echo(f"Successfully rotated {role} key for repository {gun}")


@client_command(key_group, "import")
@click.argument("files", nargs=-1, required=True, type=_FILE)
@click.option("-r", "--role", default="", help="Role for keys whose PEM has no role header.")
@click.option("-g", "--gun", default="", help="GUN for keys whose PEM has no gun header.")
@pass_options
def key_import(options: GlobalOptions, files: tuple[Path, ...], role: str, gun: str) -> None:
    """Imports all keys from all provided .pem files."""
    from vouch.cli.keyio import KeyIOError, import_block, pem_blocks
    from vouch.crypto.keyfile import KeyFileError

    store = options.session().keystore()
    failed = []
    for file in files:
        blocks = pem_blocks(file.read_bytes())
        if not blocks:
            failed.append(f"{file}: no PEM blocks")
        for block in blocks:
            try:
                done = import_block(block, store, role=role, gun=gun)
            except (KeyIOError, KeyFileError) as exc:
                failed.append(f"{file}: {exc}")
                continue
            where = f" for {done.gun}" if done.gun else ""
            click.echo(f"Imported {done.role} key {done.keyid}{where}")
    if failed:
        raise CLIError(f"failed to import all keys: {'; '.join(failed)}")


@client_command(key_group, "export")
@click.option("--key", "key_ids", multiple=True, help="Key IDs to export (repeatable).")
@click.option("--gun", "guns", multiple=True, help="GUNs for which to export keys (repeatable).")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file."
)
@pass_options
def key_export(
    options: GlobalOptions, key_ids: tuple[str, ...], guns: tuple[str, ...], output: Path | None
) -> None:
    """Exports keys (still encrypted) as a PEM bundle that 'key import' reads."""
    from vouch.cli.keyio import export_keys, write_private

    data = export_keys(options.session().keystore(), split_list(key_ids), split_list(guns))
    if output is not None:
        write_private(output, data)
    else:
        write_bytes(data)


def _key_info(options: GlobalOptions, key_id: str) -> KeyInfo:
    from vouch.crypto.keystore import KeyNotFoundError

    if not _KEY_ID.match(key_id):
        raise CLIError(f"invalid key ID provided: {key_id}")
    try:
        return options.session().keystore().key_info(key_id)
    except KeyNotFoundError:
        raise CLIError(f"No key with ID {key_id} found") from None


@client_command(key_group, "remove")
@click.argument("key_id")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_options
def key_remove(options: GlobalOptions, key_id: str, yes: bool) -> None:
    """Removes the key with the given keyID."""
    info = _key_info(options, key_id)
    description = f"{key_id} (role {info.role}) from {info.path.parent}"
    if not yes and not confirm(f"Are you sure you want to remove {description}?"):
        click.echo("\nAborting action.")
        return
    options.session().keystore().remove(key_id)
    click.echo(f"\nDeleted {description}.")


@client_command(key_group, "passwd")
@click.argument("key_id")
@pass_options
def key_passwd(options: GlobalOptions, key_id: str) -> None:
    """Changes the passphrase for the key with the given keyID."""
    from vouch.cli.prompts import passphrase_retriever
    from vouch.crypto.keystore import KeyStore

    info = _key_info(options, key_id)
    session = options.session()
    key = session.keystore().load(key_id)
    # A fresh retriever, so the old passphrase is not offered as the new one.
    KeyStore(session.trust_dir, passphrase_retriever()).save(key, info.role, info.gun)
    click.echo(f"\nSuccessfully updated passphrase for key ID: {key_id}")
