"""notary-server's error envelope (Docker distribution "errcode").

The notary CLI parses ``detail`` from a 400 with exactly one error to tell its
user *why* an update was refused, so codes, messages and details follow
notary-server exactly; bodies end with a newline like Go's encoder.
"""

from __future__ import annotations

import json
from typing import Any, Final

from starlette.responses import Response

_ERRORS: Final = {
    "NO_STORAGE": (500, "The server is misconfigured and has no storage."),
    "NO_FILENAME": (400, "No file/role name provided."),
    "INVALID_ROLE": (400, "The role you are attempting to operate on is invalid."),
    "MALFORMED_JSON": (400, "JSON sent by the client could not be parsed by the server"),
    "UPDATING": (500, "An error has occurred while updating the TUF repository."),
    "VERSION": (400, "A newer version of metadata is already available."),
    "METADATA_NOT_FOUND": (404, "You have requested metadata that does not exist."),
    "INVALID_UPDATE": (400, "Update sent by the client is invalid."),
    "MALFORMED_UPLOAD": (400, "The body of your request is malformed."),
    "GENERIC_NOT_FOUND": (404, "You have requested a resource that does not exist."),
    "NO_CRYPTOSERVICE": (500, "The server does not have a signing service configured."),
    "NO_KEYALGORITHM": (500, "The server does not have a key algorithm configured."),
    "INVALID_GUN": (400, "The server does not support actions on images of this name."),
    "INVALID_PARAMETERS": (400, "The parameters provided are not valid."),
    "UNKNOWN": (500, "unknown error"),
    "UNAUTHORIZED": (401, "authentication required"),
    # vouch's own: a signature is needed but the key service is unreachable.
    "UNAVAILABLE": (503, "The signing service is unavailable; retry later."),
    "TOO_LARGE": (413, "The request body is larger than the server accepts."),
}
_MISSING: Any = object()
JSON_TYPE = "application/json; charset=utf-8"


def error_body(code: str, detail: Any = _MISSING) -> tuple[int, bytes]:
    status, message = _ERRORS[code]
    err: dict[str, Any] = {"code": code, "message": message}
    if detail is not _MISSING:
        err["detail"] = detail
    return status, json.dumps({"errors": [err]}, separators=(",", ":")).encode() + b"\n"


def error_response(
    code: str, detail: Any = _MISSING, headers: dict[str, str] | None = None
) -> Response:
    status, body = error_body(code, detail)
    return Response(body, status_code=status, media_type=JSON_TYPE, headers=headers)
