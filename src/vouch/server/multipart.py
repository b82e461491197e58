"""The multipart body of notary's atomic update, parsed the way notary-server does.

The role name is the part's raw ``filename`` parameter, slashes kept
(``targets/releases``); a ``.json`` suffix is dropped; the field name and the
part's content type are ignored; for duplicate roles the last part wins.
"""

from __future__ import annotations

from python_multipart.multipart import MultipartParser, parse_options_header


class MalformedUploadError(ValueError):
    """The body is not a multipart form (maps to ``MALFORMED_UPLOAD``)."""


class NoFilenameError(ValueError):
    """A part without a filename (maps to ``NO_FILENAME``)."""


def boundary_of(content_type: str) -> bytes:
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise MalformedUploadError("request is not multipart/form-data with a boundary")
    return params[b"boundary"]


def parse_update(body: bytes, content_type: str, *, max_parts: int = 1000) -> dict[str, bytes]:
    """Role name → exact part bytes."""
    boundary = boundary_of(content_type)
    parts: list[tuple[dict[bytes, bytes], bytearray]] = []
    state: dict[str, bytes] = {"field": b"", "value": b""}
    ended: list[bool] = []

    def on_part_begin() -> None:
        if len(parts) >= max_parts:
            raise MalformedUploadError(f"more than {max_parts} parts")
        parts.append(({}, bytearray()))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1][0][state["field"].lower()] = state["value"]
        state["field"] = state["value"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    def on_end() -> None:
        ended.append(True)

    try:
        # Inside the try: the constructor refuses boundaries over 256 bytes.
        parser = MultipartParser(
            boundary,
            {
                "on_end": on_end,
                "on_part_begin": on_part_begin,
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
                "on_part_data": on_part_data,
            },
        )
        parser.write(body)
        parser.finalize()
    except MalformedUploadError:
        raise
    except Exception as exc:  # python-multipart raises several error types
        raise MalformedUploadError(f"malformed multipart body: {exc}") from exc
    if not ended:
        # Zero parts is valid: notary's `publish` with nothing staged re-signs
        # only what the server holds (a new snapshot and timestamp).
        raise MalformedUploadError("multipart body has no closing boundary")
    out: dict[str, bytes] = {}
    for headers, data in parts:
        _, params = parse_options_header(headers.get(b"content-disposition", b""))
        raw = params.get(b"filename")
        if not raw:
            raise NoFilenameError("part without a filename")
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedUploadError("filename is not UTF-8") from exc
        name = name.removesuffix(".json")
        out[name] = bytes(data)
    return out
