"""Role names: the four base roles and the rules for delegated role names."""

from __future__ import annotations

import posixpath
import re
from typing import Final

from vouch.tuf.errors import RoleError

ROOT: Final = "root"
TARGETS: Final = "targets"
SNAPSHOT: Final = "snapshot"
TIMESTAMP: Final = "timestamp"
BASE_ROLES: Final = (ROOT, TARGETS, SNAPSHOT, TIMESTAMP)

# The ``_type`` each role's metadata must carry, exact case.
TYPE_OF: Final = {ROOT: "Root", TARGETS: "Targets", SNAPSHOT: "Snapshot", TIMESTAMP: "Timestamp"}

MAX_ROLE_NAME: Final = 255
_DELEGATION_CHARS = re.compile(r"[-a-z0-9_/]+\Z")


def is_delegation(name: str) -> bool:
    return name.startswith(TARGETS + "/")


def check_delegation_name(name: str) -> None:
    """Raise :class:`RoleError` unless ``name`` is a valid Notary delegation name.

    Lowercase ``[-a-z0-9_/]`` only, under ``targets/``, shorter than 256, and
    "clean": no empty, ``.`` or ``..`` segment and no trailing slash. These
    rules keep role names safe to use as file paths and URL segments.
    """
    if not is_delegation(name):
        raise RoleError(f"delegation {name!r} must start with 'targets/'")
    if len(name) > MAX_ROLE_NAME:
        raise RoleError(f"delegation name is {len(name)} characters, over {MAX_ROLE_NAME}")
    if not _DELEGATION_CHARS.match(name):
        raise RoleError(f"delegation {name!r} may only hold lowercase letters, digits, -, _ and /")
    if posixpath.normpath(name) != name or any(s in ("", ".", "..") for s in name.split("/")):
        raise RoleError(f"delegation {name!r} is not a clean path")


def parent_of(name: str) -> str:
    """The role that must declare ``name``: ``targets/a/b`` is declared in ``targets/a``."""
    return posixpath.dirname(name)


def check_role_name(name: str) -> None:
    """Raise unless ``name`` is a base role or a valid delegation."""
    if name in BASE_ROLES:
        return
    check_delegation_name(name)


def type_for(role: str) -> str:
    """The ``_type`` for a role's metadata (delegations are ``Targets``)."""
    return TYPE_OF.get(role, "Targets") if role in TYPE_OF or is_delegation(role) else ""
