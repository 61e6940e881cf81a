"""Times in the API (R20): ISO 8601 with an offset, rendered in Asia/Shanghai (+08:00).

The database keeps aware UTC; the API shows every moment with the +08:00 offset that users and
institutions read, and refuses an input time without an offset (a naive time is ambiguous).
Milliseconds are the finest unit shown: JavaScript's ``Date`` (mini-programs, iOS included)
parses at most three fractional digits reliably.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from app.errors import ValidationFailed

SHANGHAI = ZoneInfo("Asia/Shanghai")


def iso(moment: datetime | None) -> str | None:
    """``2025-03-01T09:30:00.000+08:00`` for an aware moment; None stays None; naive is a bug."""
    if moment is None:
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a timezone-aware datetime is required")
    return moment.astimezone(SHANGHAI).isoformat(timespec="milliseconds")


def parse_aware(text: str, *, field: str = "time") -> datetime:
    """Parse an ISO 8601 time that carries an offset (or ``Z``) into aware UTC.

    Raises ValidationFailed (400) naming ``field`` when the text is not ISO 8601 or has no offset.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValidationFailed("{field} must be an ISO 8601 time with an offset.", params={"field": field},
                               details={"field": field})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValidationFailed(
            "{field} must be an ISO 8601 time with an offset, e.g. 2025-03-01T09:30:00+08:00.",
            params={"field": field}, details={"field": field, "reason": "malformed"},
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValidationFailed(
            "{field} has no offset; send e.g. 2025-03-01T09:30:00+08:00.",
            params={"field": field}, details={"field": field, "reason": "no_offset"},
        )
    return moment.astimezone(UTC)
