"""What can go wrong talking to a trust server, as errors a caller can act on.

The notary CLI decides its next step by error *kind*: fall back to the cached
timestamp when the server is unreachable, unauthorized, 5xx or says 404; tell
the user to ``init`` when root is missing; show the server's validation
message when a publish is refused; treat an oversized reply as an attack. So
the classes follow those decisions, not HTTP status codes one by one, and
every message that the notary CLI prints is rendered the way it renders it.

::

    RemoteError
    ├── NotFound              404
    ├── ServerUnavailable     5xx and other unexpected statuses (``status``)
    │   └── Offline           no HTTP answer at all (connection, TLS, timeout)
    ├── Unauthorized          401 after every way to get a token was tried
    ├── UpdateRejected        400 (``code``, ``detail``, parsed ``validation``)
    │   └── VersionConflict   400 ``VERSION``: someone published first
    └── BadResponse           a reply that cannot be what an honest server sends
        └── TooLarge          more bytes than the limit for that file
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

#: How the notary CLI words each serializable validation error (``tuf/validation``).
VALIDATION_PREFIXES: Final = {
    "ErrValidation": "An error occurred during validation",
    "ErrBadHierarchy": "Metadata hierarchy is incomplete",
    "ErrBadRoot": "The root metadata is invalid",
    "ErrBadTargets": "The targets metadata is invalid",
    "ErrBadSnapshot": "The snapshot metadata is invalid",
}


class RemoteError(Exception):
    """Base of every trust-server failure; ``url`` is the request that failed, if any."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = url

    def __str__(self) -> str:
        return self.message


class NotFound(RemoteError):
    """404: the server has no such metadata (or key, or route).

    ``repository_missing`` is true for the current ``root.json``: a
    repository without root does not exist or was never initialised, which the
    CLI reports differently from a missing version or checksum.
    """

    def __init__(
        self, *, gun: str, resource: str, server: str, url: str | None = None, code: str = ""
    ) -> None:
        self.gun = gun
        self.resource = resource
        self.server = server
        self.code = code
        self.repository_missing = resource == "root.json"
        if self.repository_missing:
            message = f"{server} does not have trust data for {gun}"
        else:
            # notary's ErrMetaNotFound, two spaces included.
            message = (
                f"{resource} trust data unavailable.  Has a notary repository been initialized?"
            )
        super().__init__(message, url=url)


class ServerUnavailable(RemoteError):
    """The server answered with a status that says "not now" (5xx, or one we do not expect).

    ``status`` is the HTTP status, ``None`` for :class:`Offline`; ``code`` the
    errcode from the body if it had one (vouch sends ``UNAVAILABLE`` when its
    signer is down).
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int | None,
        url: str | None = None,
        code: str = "",
    ) -> None:
        self.status = status
        self.code = code
        if message is None:
            message = f"unable to reach trust server at this time: {status}."
        super().__init__(message, url=url)


class Offline(ServerUnavailable):
    """No HTTP answer: connection refused, DNS, TLS handshake or timeout.

    The cause (an ``httpx`` transport error) is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message, status=None, url=url)


class Unauthorized(RemoteError):
    """401 from the trust server after the token flow ran, or the token server
    refused the credentials.

    ``scope`` is what the server's challenge asked for (e.g.
    ``repository:example.com/app:push,pull``) and ``error`` its ``error=``
    parameter (``invalid_token`` / ``insufficient_scope``), so a caller can
    tell "log in" from "you may not push here".
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        url: str | None = None,
        scope: str | None = None,
        error: str | None = None,
    ) -> None:
        self.scope = scope
        self.error = error
        if message is None:
            message = "you are not authorized to perform this operation: server returned 401."
            if scope:
                message += f" (needs {scope}"
                message += f", {error})" if error else ")"
        super().__init__(message, url=url)


@dataclass(frozen=True)
class ValidationDetail:
    """notary-server's serializable validation error: ``{"Name", "Error": {"Msg", "Missing"?}}``."""

    name: str
    msg: str
    missing: str | None = None

    def render(self) -> str:
        """The notary CLI's wording, e.g. ``The targets metadata is invalid: …``."""
        return f"{VALIDATION_PREFIXES[self.name]}: {self.msg}"

    @classmethod
    def parse(cls, detail: Any) -> ValidationDetail | None:
        """The detail if it is one notary's client would decode, else ``None``.

        Unknown names decode to nothing in Go, so they do here: the caller then
        shows the generic "rejected" message, as notary does.
        """
        if not isinstance(detail, dict):
            return None
        name, error = detail.get("Name"), detail.get("Error")
        if name not in VALIDATION_PREFIXES or not isinstance(error, dict):
            return None
        msg = error.get("Msg", "")
        missing = error.get("Missing")
        if not isinstance(msg, str):
            return None
        return cls(str(name), msg, missing if isinstance(missing, str) else None)


class UpdateRejected(RemoteError):
    """400: the server refused the request itself; retrying the same bytes is pointless.

    ``code`` is the errcode (``INVALID_UPDATE``, ``MALFORMED_UPLOAD``,
    ``INVALID_ROLE`` …), ``server_message`` its message and ``detail`` the raw
    ``detail`` value. For a validation failure ``validation`` holds the parsed
    detail and ``str()`` is exactly what the notary CLI prints.
    """

    def __init__(
        self,
        *,
        code: str = "",
        server_message: str = "",
        detail: Any = None,
        status: int = 400,
        url: str | None = None,
    ) -> None:
        self.code = code
        self.server_message = server_message
        self.detail = detail
        self.status = status
        self.validation = ValidationDetail.parse(detail)
        if self.validation is not None:
            message = self.validation.render()
        elif code or server_message:
            text = server_message or "no message"
            extra = f" ({detail})" if isinstance(detail, str) and detail else ""
            message = f"trust server rejected operation: {code or status}: {text}{extra}"
        else:
            message = "trust server rejected operation."
        super().__init__(message, url=url)


class VersionConflict(UpdateRejected):
    """400 ``VERSION``: the server already has a newer version; update and publish again."""


class BadResponse(RemoteError):
    """The server's reply is malformed or impossible (notary: "trust server returned
    a bad response."); treat it as hostile, not as a transient failure."""


class TooLarge(BadResponse):
    """A reply (or its declared ``Content-Length``) is larger than ``limit`` bytes.

    ``declared`` is the ``Content-Length`` that was refused before reading,
    ``None`` when the body itself ran past the limit and reading stopped.
    """

    def __init__(self, what: str, *, limit: int, declared: int | None, url: str | None) -> None:
        self.what = what
        self.limit = limit
        self.declared = declared
        if declared is not None:
            message = (
                f"trust server returned a bad response: {what} declares {declared} bytes, "
                f"more than the {limit} allowed"
            )
        else:
            message = (
                f"trust server returned a bad response: {what} is larger than the "
                f"{limit} bytes allowed"
            )
        super().__init__(message, url=url)


__all__ = [
    "BadResponse",
    "NotFound",
    "Offline",
    "RemoteError",
    "ServerUnavailable",
    "TooLarge",
    "Unauthorized",
    "UpdateRejected",
    "ValidationDetail",
    "VersionConflict",
]
