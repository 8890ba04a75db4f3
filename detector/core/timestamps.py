"""The one RFC 3339 formatter: UTC, milliseconds, ``Z``, as the contracts write times.

Milliseconds are truncated, not rounded, as ``datetime.isoformat`` does: an alert's id and its
times have always been written this way, and replay output must not change.

>>> rfc3339(1767571200.1239)
'2026-01-05T00:00:00.123Z'
>>> from datetime import timedelta, timezone
>>> rfc3339(datetime(2026, 1, 5, 1, 0, tzinfo=timezone(timedelta(hours=1))))
'2026-01-05T00:00:00.000Z'
>>> rfc3339(0)
'1970-01-01T00:00:00.000Z'
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["rfc3339", "utc"]


def utc(t: float) -> datetime:
    """Unix seconds as an aware datetime in UTC (to the microsecond)."""
    return datetime.fromtimestamp(t, UTC)


def rfc3339(t: float | datetime) -> str:
    """Unix seconds or an aware datetime as RFC 3339 in UTC with milliseconds."""
    dt = t.astimezone(UTC) if isinstance(t, datetime) else utc(t)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")

