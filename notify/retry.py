"""When to try a failed push again (R15) — pure: plain values and a random source in, a decision out.

Transient failures are retried after ``base × 2^(n−1)`` seconds (n = attempts so far), with ±20 %
jitter so that a platform outage does not end in a synchronised stampede, never more than an
hour apart, and only while the delivery's retry window (24 h from the money movement) lasts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

RETRY_WINDOW = timedelta(hours=24)
MAX_GAP_SECONDS = 3600.0
JITTER = 0.2


def retry_delay_seconds(attempts: int, base_seconds: float, rng: random.Random) -> float:
    """The wait before attempt ``attempts + 1`` after ``attempts`` failed ones."""
    if attempts < 1:
        raise ValueError("attempts counts failed attempts and starts at 1")
    # 2^(n-1) overflows a float long before n matters; the gap is capped at an hour anyway.
    raw = base_seconds * 2.0 ** min(attempts - 1, 32)
    return min(raw * rng.uniform(1 - JITTER, 1 + JITTER), MAX_GAP_SECONDS)


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    at: datetime | None = None


def after_transient_failure(
    attempts: int, now: datetime, give_up_at: datetime, base_seconds: float, rng: random.Random
) -> RetryDecision:
    """Retry at ``now + delay`` if that is still inside the window, else give up."""
    at = now + timedelta(seconds=retry_delay_seconds(attempts, base_seconds, rng))
    if at > give_up_at:
        return RetryDecision(False)
    return RetryDecision(True, at)
