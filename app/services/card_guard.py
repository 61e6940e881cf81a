"""Failed social-security card look-ups per institution (R12, R19): a settlement API that said
"no such card" without limit would let an institution (or whoever holds its key) test card
numbers. Once an institution has failed ``CARD_LOOKUP_FAILURES`` (default ``10/600``) look-ups in
the moving window, its card look-ups answer ``RATE_LIMITED`` until the oldest failure leaves it.

The limit holds under concurrency. Counting a failure after the look-up would let N look-ups sent
together all pass a check made before any of them failed (N answers, whatever the limit). So each look-up first
**reserves a slot**, atomically, and is admitted only while the window's failures plus the
reservations in flight are below the limit; a look-up that fails turns its reservation into a
failure, one that succeeds (or breaks) gives it back. Successful look-ups therefore never count, and
at most ``limit`` "no such card" answers come out of a window, however many requests race.

A look-up refused only because others are in flight (the failures alone are below the limit) waits
for them — a look-up takes milliseconds — up to ``BUSY_WAIT_SECONDS``, so a busy counter's right
cards are not refused because they came together.

Storage: with Redis (``REDIS_URL``) two sorted sets per institution, the failures and the
reservations, shared by every process; reserving and failing are small Lua scripts (trim, count,
add in one step) on Redis' own clock, giving back is one ZREM. Without Redis (the embedded default)
the same in this process's memory, under a lock (so per process, as before). A reservation never
given back — its process died, or Redis failed just then — counts as a failure made when it was
reserved once it is ``STALE_RESERVATION_SECONDS`` old. If Redis fails, card look-ups are refused
with 503 (fail closed, like the limits on ID-number checks, ``app.extensions.FAIL_CLOSED_GROUPS``):
a limit that stopped counting would let card numbers be tested at full speed.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from app import errors

log = logging.getLogger(__name__)

# How long a look-up waits for look-ups in flight to finish when they hold the last free slots.
BUSY_WAIT_SECONDS = 1.0
# How often a waiting look-up asks Redis again (in memory, a finished look-up wakes it at once).
REDIS_POLL_SECONDS = 0.005
# ``retry_after`` of a refusal when the failures alone are below the limit (look-ups in flight).
BUSY_RETRY_AFTER_SECONDS = 1
# A reservation older than this (or than the window) was lost — its process died, or Redis failed
# when it was given back: it counts as a failure made when it was reserved, and is not waited for.
STALE_RESERVATION_SECONDS = 30


@dataclass
class Refusal:
    """No slot: ``used_up`` when the window's failures reach the limit (free again in ``wait``
    seconds), else the last slots are held by look-ups in flight."""

    used_up: bool
    wait: float = 0.0
    seen: int = 0  # in memory: the count of finished look-ups when it was refused


@dataclass
class Attempt:
    """One admitted look-up; ``failed()`` when it found no such card."""

    token: str
    key: str
    did_fail: bool = field(default=False)

    def failed(self) -> None:
        self.did_fail = True


class _NoLimit:
    def failed(self) -> None:
        pass


# KEYS: failures, reservations. ARGV: limit, window (s), token, stale after (s).
# {0} admitted · {1, seconds until a failure leaves the window} · {2} the rest is in flight.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local lost_before = now - math.min(tonumber(ARGV[4]), window)
local lost = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', lost_before, 'WITHSCORES')
for i = 1, #lost, 2 do
  redis.call('ZADD', KEYS[1], lost[i + 1], lost[i])
end
if #lost > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', lost_before)
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local failed = redis.call('ZCARD', KEYS[1])
if failed >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], failed - limit, failed - limit, 'WITHSCORES')
  return {1, tostring(tonumber(oldest[2]) + window - now)}
end
if failed + redis.call('ZCARD', KEYS[2]) >= limit then
  return {2, '0'}
end
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('PEXPIRE', KEYS[2], math.ceil(window * 1000))
return {0, '0'}
"""

# KEYS: failures, reservations. ARGV: window (s), token. The reservation becomes a failure.
_FAIL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) * 1000))
return 1
"""


class _RedisSlots:
    """The two sorted sets of each institution, in Redis (shared by every process)."""

    def __init__(self, redis: Any):
        self.redis = redis
        self._reserve = redis.register_script(_RESERVE)
        self._fail = redis.register_script(_FAIL)

    @staticmethod
    def _keys(key: str) -> list[str]:
        # One hash tag: both keys in one cluster slot, as a script needs.
        return [f"{{{key}}}:failed", f"{{{key}}}:in_flight"]

    def reserve(self, key: str, token: str, limit: int, window: int) -> Refusal | None:
        state, seconds = self._reserve(keys=self._keys(key), args=[limit, window, token, STALE_RESERVATION_SECONDS])
        if int(state) == 0:
            return None
        return Refusal(used_up=int(state) == 1, wait=float(seconds))

    def wait_for_change(self, refusal: Refusal, timeout: float) -> None:
        time.sleep(min(timeout, REDIS_POLL_SECONDS))

    def release(self, key: str, token: str) -> None:
        self.redis.zrem(self._keys(key)[1], token)

    def fail(self, key: str, token: str, window: int) -> None:
        self._fail(keys=self._keys(key), args=[window, token])

    def reset(self) -> None:
        pass  # the tests flush the Redis database


class _MemorySlots:
    """The same in this process's memory (the embedded default): per key, the failure times and
    the reservations in flight, under one lock; a finished look-up wakes those waiting."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._finished = 0  # look-ups given back or failed, to wake those waiting for a slot
        self._failed: dict[str, list[float]] = {}
        self._in_flight: dict[str, dict[str, float]] = {}

    def reserve(self, key: str, token: str, limit: int, window: int) -> Refusal | None:
        now = time.monotonic()
        with self._changed:
            lost_before = now - min(STALE_RESERVATION_SECONDS, window)
            in_flight = self._in_flight.get(key, {})
            lost = [at for at in in_flight.values() if at <= lost_before]
            in_flight = {t: at for t, at in in_flight.items() if at > lost_before}
            failed = sorted(at for at in [*self._failed.get(key, ()), *lost] if at > now - window)
            if len(failed) >= limit:
                self._store(key, failed, in_flight)
                return Refusal(used_up=True, wait=failed[len(failed) - limit] + window - now)
            if len(failed) + len(in_flight) >= limit:
                self._store(key, failed, in_flight)
                return Refusal(used_up=False, seen=self._finished)
            in_flight[token] = now
            self._store(key, failed, in_flight)
            return None

    def _store(self, key: str, failed: list[float], in_flight: dict[str, float]) -> None:
        for table, value in ((self._failed, failed), (self._in_flight, in_flight)):
            if value:
                table[key] = value
            else:
                table.pop(key, None)

    def wait_for_change(self, refusal: Refusal, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._finished != refusal.seen, timeout)

    def release(self, key: str, token: str) -> None:
        with self._changed:
            self._in_flight.get(key, {}).pop(token, None)
            self._finished += 1
            self._changed.notify_all()

    def fail(self, key: str, token: str, window: int) -> None:
        with self._changed:
            self._in_flight.get(key, {}).pop(token, None)
            self._failed.setdefault(key, []).append(time.monotonic())
            self._finished += 1
            self._changed.notify_all()

    def reset(self) -> None:
        with self._changed:
            self._failed.clear()
            self._in_flight.clear()


class CardLookupGuard:
    """``with guard.look_up(institution_id) as attempt:`` around one card look-up; call
    ``attempt.failed()`` when it found no such card. Raises ``RATE_LIMITED`` (``retry_after``,
    ``group: card``) instead of admitting a look-up past the limit."""

    def __init__(self, redis: Any | None, limit: tuple[int, int] | None):
        self.limit = limit
        self.shared = redis is not None
        self.slots: _RedisSlots | _MemorySlots = _RedisSlots(redis) if redis is not None else _MemorySlots()

    @staticmethod
    def _key(institution_id: int) -> str:
        return f"card_lookups:institution:{institution_id}"

    @contextmanager
    def look_up(self, institution_id: int) -> Iterator[Attempt | _NoLimit]:
        if self.limit is None:
            yield _NoLimit()
            return
        attempt = self._reserve(self._key(institution_id))
        try:
            yield attempt
        except BaseException:
            self._finish(attempt, failed=False)  # it answered nothing about the card
            raise
        self._finish(attempt, failed=attempt.did_fail)

    def _reserve(self, key: str) -> Attempt:
        count, window = self.limit  # type: ignore[misc]
        token = secrets.token_hex(8)
        deadline = time.monotonic() + BUSY_WAIT_SECONDS
        while True:
            refusal = self._storage(lambda: self.slots.reserve(key, token, count, window))
            if refusal is None:
                return Attempt(token, key)
            left = deadline - time.monotonic()
            if refusal.used_up:
                raise errors.RateLimited("Too many card look-ups failed; try again later.",
                                         details={"retry_after": max(1, math.ceil(refusal.wait)), "group": "card"})
            if left <= 0:
                raise errors.RateLimited("Too many card look-ups are under way; try again shortly.",
                                         details={"retry_after": BUSY_RETRY_AFTER_SECONDS, "group": "card"})
            self.slots.wait_for_change(refusal, left)

    def _finish(self, attempt: Attempt, *, failed: bool) -> None:
        """Keep the reservation as a failure, or give it back. If Redis fails here the reservation
        stays, and soon counts as a failure (``STALE_RESERVATION_SECONDS``): never fewer than were made."""
        try:
            if failed:
                self.slots.fail(attempt.key, attempt.token, self.limit[1])  # type: ignore[index]
            else:
                self.slots.release(attempt.key, attempt.token)
        except Exception as exc:  # noqa: BLE001 — the look-up's answer stands; the slot stays counted
            log.warning("card look-up limit storage unavailable (%s): a reservation stays counted",
                        type(exc).__name__)

    def _storage(self, call: Any) -> Any:
        if not self.shared:
            return call()
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 — any storage failure: refuse (fail closed)
            log.warning("card look-up limit storage unavailable (%s): card look-up refused (fail closed)",
                        type(exc).__name__)
            raise errors.limit_cannot_count() from None

    def reset(self) -> None:
        """Forget every count (tests; Redis is flushed by them instead)."""
        self.slots.reset()
