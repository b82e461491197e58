"""Image references, normalised the way Docker and containerd resolve them.

``nginx`` is ``docker.io/library/nginx:latest`` when pulled, so policies
match on the normalised form; matching the string as written let
``nginx`` slip past ``docker.io/library/*`` (portieris#337).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAINS = frozenset({"index.docker.io", "registry-1.docker.io"})
MAX_NAME = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_REFERENCE = re.compile(
    rf"(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?\Z"
)
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}\Z")


class InvalidReferenceError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ImageReference:
    """A normalised reference: ``domain/path`` plus an optional tag and digest."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The repository, ``docker.io/library/nginx``: the Notary GUN."""
        return f"{self.domain}/{self.path}"

    @property
    def host(self) -> str:
        return self.domain

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def with_digest(self, digest: str) -> ImageReference:
        return ImageReference(self.domain, self.path, self.tag, digest)

    def match_string(self) -> str:
        """What policy patterns are matched against: ``name:tag`` (``latest`` if
        neither tag nor digest is given), or ``name@digest`` for digest-only."""
        if self.tag is None and self.digest is not None:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or 'latest'}"


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain in LEGACY_DOMAINS:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = f"library/{remainder}"
    return domain, remainder


def parse(text: str) -> ImageReference:
    """Parse and normalise an image reference; raise :class:`InvalidReferenceError`."""
    if not text or text != text.strip():
        raise InvalidReferenceError(f"invalid image reference {text!r}")
    m = _REFERENCE.match(text)
    if m is None:
        raise InvalidReferenceError(f"invalid image reference {text!r}")
    name = m["name"]
    if len(name) > MAX_NAME:
        raise InvalidReferenceError(f"repository name longer than {MAX_NAME} characters")
    domain, path = _split_domain(name)
    digest = m["digest"]
    if digest is not None and not _SHA256.match(digest):
        raise InvalidReferenceError(f"unsupported digest {digest!r}: only sha256 is allowed")
    return ImageReference(domain, path, m["tag"], digest)


def normalise_pattern(pattern: str) -> str:
    """Give a policy pattern the image's normal form, so ``nginx`` and
    ``library/*`` mean Docker Hub as they do when pulling. Patterns that
    start with a wildcard or a domain are left as written."""
    if not pattern or pattern.startswith("*"):
        return pattern
    first, sep, _ = pattern.partition("/")
    if sep and (any(c in first for c in ".:") or first == "localhost"):
        return pattern
    if "*" in first:
        return pattern
    colon = pattern.find(":", pattern.rfind("/") + 1)
    name, suffix = (pattern[:colon], pattern[colon + 1 :]) if colon != -1 else (pattern, "")
    domain, path = _split_domain(name)
    out = f"{domain}/{path}"
    return f"{out}:{suffix}" if suffix else out
