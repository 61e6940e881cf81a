"""Failed social-security card look-ups per institution (R12, R19): a settlement API that said
"no such card" without limit would let an institution (or whoever holds its key) test card
numbers. Each failed look-up is counted on the ``limits`` moving window (Redis when configured,
memory otherwise); once an institution reaches ``CARD_LOOKUP_FAILURES`` (default ``10/600``), its
card look-ups answer ``RATE_LIMITED`` until the window moves on. Successful look-ups do not count,
so a busy counter is never slowed down.
"""

from __future__ import annotations

import time

from limits import parse_many
from limits.strategies import MovingWindowRateLimiter

from app import errors


class CardLookupGuard:
    def __init__(self, storage, limit: tuple[int, int] | None):
        self.strategy = MovingWindowRateLimiter(storage)
        self.item = parse_many(f"{limit[0]}/{limit[1]} seconds")[0] if limit else None

    def _key(self, institution_id: int) -> str:
        return f"card_failures:institution:{institution_id}"

    def check(self, institution_id: int) -> None:
        """``RATE_LIMITED`` (with the wait) when the institution has used up its failed look-ups."""
        if self.item is None:
            return
        key = self._key(institution_id)
        if not self.strategy.test(self.item, key):
            reset_at, _remaining = self.strategy.get_window_stats(self.item, key)
            wait = max(1, int(reset_at - time.time()) + 1)
            raise errors.RateLimited("Too many card look-ups failed; try again later.",
                                     details={"retry_after": wait, "group": "card"})

    def failed(self, institution_id: int) -> None:
        """Count one failed look-up."""
        if self.item is not None:
            self.strategy.hit(self.item, self._key(institution_id))
