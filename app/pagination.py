"""Keyset pagination (``{items, next_cursor}``): newest first, the cursor is the last id seen.

The cursor is opaque to clients (URL-safe base64 of a small JSON) so its shape can change
without breaking them; a tampered or malformed cursor is a 400.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from app import errors

T = TypeVar("T")
DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"id": last_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    """The id to continue below, or None for the first page."""
    if not cursor:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        last_id = value["id"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise errors.ValidationFailed("The cursor is not valid.", details={"cursor": "malformed"}) from None
    if not isinstance(last_id, int) or isinstance(last_id, bool) or last_id < 1:
        raise errors.ValidationFailed("The cursor is not valid.", details={"cursor": "malformed"})
    return last_id


def clamp_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if limit < 1 or limit > MAX_LIMIT:
        raise errors.ValidationFailed("limit must be between 1 and {max}.", params={"max": MAX_LIMIT},
                                      details={"limit": limit})
    return limit


def page(rows: Sequence[T], limit: int, row_id: Callable[[T], int], render: Callable[[T], Any]) -> dict[str, Any]:
    """Build ``{items, next_cursor}`` from up to ``limit + 1`` rows fetched newest first."""
    more = len(rows) > limit
    shown = rows[:limit]
    return {
        "items": [render(row) for row in shown],
        "next_cursor": encode_cursor(row_id(shown[-1])) if more and shown else None,
    }
