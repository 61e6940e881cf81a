"""Record reads on a PostgreSQL streaming replica (``DATABASE_REPLICA_URL``, issue 14).

Which reads: the blueprints of record look-ups — deductions, quota, authorization records,
notifications, the audit log, the staff API's and web console's look-ups of deliveries, suspensions
and binding records, the console's overview — take their session from ``read_session()`` instead of
``session()``. Everything else, and every service that writes (money transactions, look-ups that
are audit-logged), uses the primary.

When a read goes to the primary instead:

- no replica is configured (the embedded default, or a single database);
- *read your own writes*: the caller (user or staff) made a successful write request within the
  last ``REPLICA_MAX_LAG_SECONDS`` + 1 s — marked in Redis (``copay:ryw:<actor>``, so every worker
  sees it), or in this process when there is no Redis;
- the replica is down (cannot connect, or a query failed with a connection error) — it is then
  not tried again for ``DOWN_RETRY_SECONDS``;
- the replica lags more than ``REPLICA_MAX_LAG_SECONDS`` (below), or its lag is unknown because the
  primary did not answer the check.

How lag is measured (``ReplayLag``). The replica alone cannot tell: when its link stalls it has
replayed all it *received* and its WAL receiver still says "streaming". So each health check (at
most once a second per process, while reads come) samples the primary — its flushed WAL position
``pg_current_wal_flush_lsn()`` (the most any replica can have been sent) and its clock — then reads
the replica's replayed position ``pg_last_wal_replay_lsn()`` and the primary commit time of the last
transaction it replayed, ``pg_last_xact_replay_timestamp()``: one statement on each side. Lag is

- 0 when the replica has replayed the sample just taken: it has everything the primary had flushed
  (an idle primary never looks lagging);
- otherwise at most ``now - T``, ``T`` the newest primary time the replica is known to be up to:
  the newest earlier sample it has replayed, or its last replayed commit if that is newer (all on
  the primary's clock); infinite when neither is known. This is the lag used and reported. It does
  not read low: a stalled link, a paused replay or a slow link make it grow from the moment the
  replica fell behind, and the first check after a quiet spell (no reads, hence no samples) already
  sees the whole gap.
- and at least ``now -`` the time of the oldest sample it has not replayed.

When the two disagree about the limit (a write in flight, or the primary's flush ending inside a
record the replica cannot replay yet, at a check after a quiet spell — or a replica that stalled
during it), the replica counts as lagging and the next check runs after ``RECHECK_SECONDS`` instead
of a second: a write in flight is replayed by then and reads return to the replica; a stalled one
stays lagging.

The replica engine's connections are read-only (``default_transaction_read_only``), so even a
misconfigured URL pointing at the primary cannot be written through this path.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, g, request
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from app.metrics import READS

log = logging.getLogger(__name__)

CHECK_EVERY_SECONDS = 1.0
RECHECK_SECONDS = 0.2  # when a check could not tell whether the replica lags (see ``ReplayLag``)
DOWN_RETRY_SECONDS = 5.0
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


# The primary's side of a health check: how far its WAL is flushed (what a replica can have been
# sent), in bytes, and its clock.
PRIMARY_SQL = text("SELECT pg_current_wal_flush_lsn() - '0/0'::pg_lsn,"
                   " EXTRACT(EPOCH FROM clock_timestamp())::float8")
# The replica's side: is it a replica, how far has it replayed (bytes), and the primary commit time
# of the last transaction it replayed (NULL before it replays one).
REPLICA_SQL = text("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() - '0/0'::pg_lsn,"
                   " EXTRACT(EPOCH FROM pg_last_xact_replay_timestamp())::float8")


@dataclass(frozen=True)
class Lag:
    """What one check knows of the replica's lag: at least ``low`` and at most ``high`` seconds."""

    low: float
    high: float


class ReplayLag:
    """A replica's lag from the primary's WAL positions over time (see the module docstring).

    Plain arithmetic, no database and no clock of its own: ``measure`` is given the primary's flushed
    position and clock at this check, and the replica's replayed position and last replayed commit
    time. It keeps the samples the replica has not replayed yet, and the newest one it has.
    """

    def __init__(self, keep: int = 600) -> None:
        # (primary flushed LSN, primary time), oldest first. Checks run at most once a second, so
        # ``keep`` samples span at least ``keep`` seconds; past that, lag is known to be huge anyway.
        self._samples: deque[tuple[int, float]] = deque(maxlen=keep)

    def measure(self, primary_lsn: int, primary_time: float, replayed_lsn: int,
                replayed_commit_time: float | None) -> Lag:
        if self._samples and primary_lsn < self._samples[-1][0]:
            self._samples.clear()  # the primary's WAL went back: a different primary (failover, restore)
        self._samples.append((primary_lsn, primary_time))
        if replayed_lsn >= primary_lsn:
            self._samples.clear()
            self._samples.append((primary_lsn, primary_time))
            return Lag(0.0, 0.0)
        newest_replayed = None
        while self._samples[0][0] <= replayed_lsn:
            newest_replayed = self._samples.popleft()
        oldest_missing = self._samples[0][1]  # the replica lacks WAL the primary had flushed by then
        if newest_replayed is not None:
            self._samples.appendleft(newest_replayed)
        # The newest primary time the replica is known to be up to.
        known = max(-math.inf if newest_replayed is None else newest_replayed[1],
                    -math.inf if replayed_commit_time is None else replayed_commit_time)
        return Lag(primary_time - oldest_missing, max(0.0, primary_time - known))


class ReplicaRouter:
    """Health of the replica (checked at most once a second per process) and the routing decision."""

    def __init__(self, engine: Any, max_lag_seconds: float, primary: Any) -> None:
        self.engine = engine
        self.primary = primary
        self.max_lag = max_lag_seconds
        self._replay_lag = ReplayLag()
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._check_every = CHECK_EVERY_SECONDS
        self._down_until = 0.0
        self.lag: float | None = None
        self.state = "unknown"  # ok | lagging | down | not_a_replica | unknown (primary did not answer)
        self._logged = ("unknown", "")

        @event.listens_for(engine, "handle_error")
        def _on_error(context: Any) -> None:
            if context.is_disconnect or context.connection is None or getattr(context, "is_pre_ping", False):
                self.mark_down(f"{type(context.original_exception).__name__}")

    def mark_down(self, why: str) -> None:
        if self.state != "down":
            log.warning("replica down (%s): record reads go to the primary", why)
        self.state = "down"
        self._logged = ("down", why)
        self._down_until = time.monotonic() + DOWN_RETRY_SECONDS

    def usable(self) -> tuple[bool, str]:
        now = time.monotonic()
        if self.state == "down" and now < self._down_until:
            return False, "replica_down"
        if now - self._checked_at >= self._check_every and self._lock.acquire(blocking=False):
            try:
                self._check()
            finally:
                self._checked_at = time.monotonic()
                self._lock.release()
        if self.state == "ok":
            return True, "replica"
        return False, {"lagging": "replica_lagging", "down": "replica_down"}.get(self.state, "replica_unusable")

    def _check(self) -> None:
        # One statement on each side, outside a transaction (no BEGIN and ROLLBACK round trips). The
        # replica's connection is taken first (a replica that is down is seen without asking the
        # primary); the primary is sampled before the replica is read, so a replica that has replayed
        # the sample has everything the primary had at that moment.
        try:
            replica = self.engine.connect()
        except Exception as exc:  # noqa: BLE001 — any failure means: read from the primary
            self.mark_down(type(exc).__name__)
            return
        with replica:
            try:
                with self.primary.connect().execution_options(isolation_level="AUTOCOMMIT") as primary:
                    primary_lsn, primary_time = primary.execute(PRIMARY_SQL).one()
            except Exception as exc:  # noqa: BLE001 — lag unknown: read from the primary
                self._set(None, "unknown", f"the primary was not sampled ({type(exc).__name__})")
                return
            try:
                replica.execution_options(isolation_level="AUTOCOMMIT")
                in_recovery, replayed_lsn, replayed_commit_time = replica.execute(REPLICA_SQL).one()
            except Exception as exc:  # noqa: BLE001 — any failure means: read from the primary
                self.mark_down(type(exc).__name__)
                return
        if not in_recovery or replayed_lsn is None:
            self._set(-1.0, "not_a_replica")
            return
        lag = self._replay_lag.measure(int(primary_lsn), float(primary_time), int(replayed_lsn),
                                       replayed_commit_time)
        # Unsure (a write in flight after a quiet spell, or a replica stalled during it): lagging
        # until a check soon after tells which.
        unsure = lag.low <= self.max_lag < lag.high
        self._check_every = RECHECK_SECONDS if unsure else CHECK_EVERY_SECONDS
        self._set(lag.high, "lagging" if lag.high > self.max_lag else "ok",
                  f"unsure, checking again in {RECHECK_SECONDS} s" if unsure else "")

    def _set(self, lag: float | None, state: str, why: str = "") -> None:
        self.lag = lag
        self.state = state
        previous, self._logged = self._logged, (state, why)
        if previous != self._logged:
            level = logging.INFO if state == "ok" or why.startswith("unsure") else logging.WARNING
            log.log(level, "replica is now %s (lag %s s)%s", state, "?" if lag is None else f"{lag:.1f}",
                    f": {why}" if why else "")


class RecentWriters:
    """Who wrote in the last few seconds (read-your-own-writes): Redis when there is one."""

    def __init__(self, redis: Any | None, seconds: float) -> None:
        self.redis = redis
        self.seconds = seconds
        self._local: dict[str, float] = {}

    def mark(self, actor: str) -> None:
        if self.redis is not None:
            try:
                self.redis.set(f"copay:ryw:{actor}", 1, px=int(self.seconds * 1000))
                return
            except Exception:  # noqa: BLE001 — fall back to this process's memory
                log.warning("read-your-writes mark not stored in Redis; kept in this process")
        now = time.monotonic()
        self._local[actor] = now + self.seconds
        if len(self._local) > 10_000:
            self._local = {k: v for k, v in self._local.items() if v > now}

    def recent(self, actor: str) -> bool:
        until = self._local.get(actor)
        if until is not None and until > time.monotonic():
            return True
        if self.redis is not None:
            try:
                return bool(self.redis.exists(f"copay:ryw:{actor}"))
            except Exception:  # noqa: BLE001 — unknown: be safe, read from the primary
                return True
        return False


def _actor() -> str | None:
    found = g.get("principal")
    return f"{found.kind}:{found.id}" if found is not None else None


def read_session() -> Session:
    """The session for a record read: the replica when that is safe, else the request's primary session."""
    from app.extensions import db

    router: ReplicaRouter | None = current_app.extensions.get("db.replica")
    if router is None:
        return db.request_session()
    actor = _actor()
    if actor is not None and current_app.extensions["db.recent_writers"].recent(actor):
        READS.labels("primary", "own_write").inc()
        return db.request_session()
    ok, reason = router.usable()
    if not ok:
        READS.labels("primary", reason).inc()
        return db.request_session()
    if "replica_session" not in g:
        # Check a connection out now (the pool's pre-ping runs here): a replica that died since the
        # last health check sends this read to the primary instead of failing it.
        try:
            connection = router.engine.connect()
        except Exception as exc:  # noqa: BLE001 — any failure: the primary answers
            router.mark_down(type(exc).__name__)
            READS.labels("primary", "replica_down").inc()
            return db.request_session()
        g.replica_connection = connection
        g.replica_session = Session(bind=connection, autobegin=False, expire_on_commit=False)
    READS.labels("replica", "replica").inc()
    return g.replica_session


def _close(_exc: BaseException | None = None) -> None:
    from app.extensions import close_at_teardown

    close_at_teardown(g.pop("replica_session", None))  # a replica gone mid-request must not raise here
    close_at_teardown(g.pop("replica_connection", None))


def init_app(app: Flask) -> None:
    url = app.config.get("DATABASE_REPLICA_URL")
    if not url:
        return
    from app.config import normalize_database_url
    from app.extensions import make_engine

    url = normalize_database_url(url)
    if not url.startswith("postgresql"):
        from app.config import ConfigError

        raise ConfigError("DATABASE_REPLICA_URL must be a PostgreSQL streaming replica (postgresql://…)")
    max_lag = float(app.config.get("REPLICA_MAX_LAG_SECONDS", 5.0))
    engine = make_engine(url, pool_size=5, max_overflow=10,
                         connect_args={"connect_timeout": 2, "options": "-c default_transaction_read_only=on"})
    app.extensions["db.replica"] = ReplicaRouter(engine, max_lag, app.extensions["db.engine"])
    app.extensions["db.recent_writers"] = RecentWriters(app.extensions.get("redis"), max_lag + 1.0)
    app.teardown_appcontext(_close)

    @app.after_request
    def _mark_own_write(response: Any) -> Any:
        if request.method in _WRITE_METHODS and response.status_code < 400:
            actor = _actor()
            if actor is not None:
                app.extensions["db.recent_writers"].mark(actor)
        return response
