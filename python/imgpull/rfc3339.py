"""The one parser of RFC 3339 times (image configs' `created`, tokens'
`issued_at`)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["parse_rfc3339"]


def parse_rfc3339(text: str) -> datetime | None:
    """`text` as an aware datetime; None when it is not a time.

    Written as Go writes it: nanoseconds (cut to microseconds), "Z" or "z".
    A time without a zone is taken as UTC.
    """
    try:
        when = datetime.fromisoformat(text.strip().upper())
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
