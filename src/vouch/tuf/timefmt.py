"""``expires`` timestamps as Notary writes and reads them.

Go writes ``time.Time`` with layout ``2006-01-02T15:04:05.999999999Z07:00``
in the *local* zone of the signing host: 0-9 fractional digits with trailing
zeros trimmed, ``Z`` or a ``+hh:mm`` offset. We accept all of that and always
write UTC with ``Z``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from vouch.tuf.errors import FormatError

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})\Z"
)


def parse(text: str) -> datetime:
    """Parse an RFC 3339 time (any offset, up to nanoseconds) into aware UTC.

    Sub-microsecond digits are truncated; the original string is kept by the
    metadata models, so nothing is lost on re-encoding.
    """
    if not isinstance(text, str):
        raise FormatError(f"expected an RFC 3339 time string, got {type(text).__name__}")
    m = _RFC3339.match(text)
    if not m:
        raise FormatError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second, frac, zone = m.groups()
    micro = int((frac or "0").ljust(6, "0")[:6])
    if zone == "Z":
        tz = UTC
    else:
        sign = -1 if zone[0] == "-" else 1
        hh, mm = int(zone[1:3]), int(zone[4:6])
        if hh > 23 or mm > 59:
            raise FormatError(f"bad zone offset in {text!r}")
        tz = timezone(sign * timedelta(hours=hh, minutes=mm))
    try:
        value = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz
        )
    except ValueError as exc:
        raise FormatError(f"not a valid time: {text!r}: {exc}") from exc
    return value.astimezone(UTC)


def format(value: datetime) -> str:
    """Write ``value`` in UTC like Go: fraction trimmed of zeros, ``Z`` suffix."""
    if value.tzinfo is None:
        raise ValueError("expiry times must be timezone-aware")
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += "." + f"{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def now() -> datetime:
    """The current time, aware and in UTC (the one place the core reads a clock)."""
    return datetime.now(UTC)
