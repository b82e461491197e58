"""GUN and role names accepted by the server.

notary-server accepts any GUN without ``*``; vouch is stricter because GUNs
become storage keys, cache keys and, on clients, directory names (Cure53
TUF-01-004): printable, no empty, ``.`` or ``..`` segment, no leading or
trailing slash, at most 255 characters.
"""

from __future__ import annotations

import re

from vouch.tuf import roles
from vouch.tuf.errors import RoleError

MAX_GUN = 255
_GUN_CHARS = re.compile(r"[A-Za-z0-9._\-/:@+~]+\Z")


class InvalidGunError(ValueError):
    pass


def check_gun(gun: str) -> str:
    if not gun or len(gun) > MAX_GUN:
        raise InvalidGunError(f"GUN must be 1 to {MAX_GUN} characters")
    if not _GUN_CHARS.match(gun):
        raise InvalidGunError("GUN holds characters outside [A-Za-z0-9._-/:@+~]")
    if any(seg in ("", ".", "..") for seg in gun.split("/")):
        raise InvalidGunError("GUN has an empty, '.' or '..' path segment")
    return gun


def check_role(role: str) -> str:
    """A role the server stores: base roles or a clean delegation name."""
    try:
        roles.check_role_name(role)
    except RoleError as exc:
        raise InvalidGunError(str(exc)) from exc
    return role
