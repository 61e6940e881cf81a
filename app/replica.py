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
- the replica lags more than ``REPLICA_MAX_LAG_SECONDS``. Lag is 0 when the replica has replayed
  everything it received and its WAL receiver is streaming; otherwise it is the age of the last
  replayed transaction, ``now() - pg_last_xact_replay_timestamp()`` (so an idle primary does not
  look like a lagging replica, and a replica cut off from its primary soon does).

The replica engine's connections are read-only (``default_transaction_read_only``), so even a
misconfigured URL pointing at the primary cannot be written through this path.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flask import Flask, current_app, g, request
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from app.metrics import READS

log = logging.getLogger(__name__)

CHECK_EVERY_SECONDS = 1.0
DOWN_RETRY_SECONDS = 5.0
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


LAG_SQL = text("""
SELECT CASE
  WHEN NOT pg_is_in_recovery() THEN -1
  WHEN pg_last_wal_receive_lsn() IS NOT NULL AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
       AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming') THEN 0
  ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 1e9)
END
""")


class ReplicaRouter:
    """Health of the replica (checked at most once a second per process) and the routing decision."""

    def __init__(self, engine: Any, max_lag_seconds: float) -> None:
        self.engine = engine
        self.max_lag = max_lag_seconds
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._down_until = 0.0
        self.lag: float | None = None
        self.state = "unknown"  # ok | lagging | down | not_a_replica

        @event.listens_for(engine, "handle_error")
        def _on_error(context: Any) -> None:
            if context.is_disconnect or context.connection is None or getattr(context, "is_pre_ping", False):
                self.mark_down(f"{type(context.original_exception).__name__}")

    def mark_down(self, why: str) -> None:
        if self.state != "down":
            log.warning("replica down (%s): record reads go to the primary", why)
        self.state = "down"
        self._down_until = time.monotonic() + DOWN_RETRY_SECONDS

    def usable(self) -> tuple[bool, str]:
        now = time.monotonic()
        if self.state == "down" and now < self._down_until:
            return False, "replica_down"
        if now - self._checked_at >= CHECK_EVERY_SECONDS and self._lock.acquire(blocking=False):
            try:
                self._check()
            finally:
                self._checked_at = time.monotonic()
                self._lock.release()
        if self.state == "ok":
            return True, "replica"
        return False, {"lagging": "replica_lagging", "down": "replica_down"}.get(self.state, "replica_unusable")

    def _check(self) -> None:
        try:
            with self.engine.connect() as conn:
                lag = float(conn.scalar(LAG_SQL))
        except Exception as exc:  # noqa: BLE001 — any failure means: read from the primary
            self.mark_down(type(exc).__name__)
            return
        self.lag = lag
        previous = self.state
        if lag < 0:
            self.state = "not_a_replica"
        elif lag > self.max_lag:
            self.state = "lagging"
        else:
            self.state = "ok"
        if previous != self.state:
            log.log(logging.INFO if self.state == "ok" else logging.WARNING, "replica is now %s (lag %.1f s)",
                    self.state, lag)


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
    session = g.pop("replica_session", None)
    if session is not None:
        session.close()
    connection = g.pop("replica_connection", None)
    if connection is not None:
        connection.close()


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
    app.extensions["db.replica"] = ReplicaRouter(engine, max_lag)
    app.extensions["db.recent_writers"] = RecentWriters(app.extensions.get("redis"), max_lag + 1.0)
    app.teardown_appcontext(_close)

    @app.after_request
    def _mark_own_write(response: Any) -> Any:
        if request.method in _WRITE_METHODS and response.status_code < 400:
            actor = _actor()
            if actor is not None:
                app.extensions["db.recent_writers"].mark(actor)
        return response
