"""Extensions, bound per app in ``create_app`` and kept in ``app.extensions`` (no I/O at import).

Tests build many apps in one process, so nothing here is a module-level connection: each
accessor finds its object on the current app.
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, current_app, g
from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from models import Base

log = logging.getLogger(__name__)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for PostgreSQL or SQLite with the settings this service relies on."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy emit BEGIN itself (pysqlite's own handling defers it), so that
            # every transaction starts IMMEDIATE: SQLite then serialises writers up front
            # instead of failing one of two read-then-write transactions with SQLITE_BUSY.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    # No pool_pre_ping: it costs a round trip (and a transaction in pg_stat_database) on every
    # checkout. A connection the server closed while it sat in the pool is caught for free instead
    # (``_discard_dead_connections``), and ``pool_recycle`` retires connections before a
    # firewall or server idle timeout can cut them silently.
    kwargs.setdefault("pool_recycle", 1800)
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        event.listen(engine, "checkout", _discard_dead_connections)
    return engine


def _discard_dead_connections(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """A liveness check without a round trip: an idle pooled connection has nothing to read, so a
    readable socket means the server closed it (restart, ``pg_terminate_backend``, idle timeout:
    it sends a FATAL notice and EOF). ``DisconnectionError`` makes the pool throw the connection
    away and check out another one (SQLAlchemy retries up to three times), so the request that
    would have failed on it goes on on a fresh connection."""
    if getattr(dbapi_conn, "closed", False) or getattr(dbapi_conn, "broken", False):
        raise DisconnectionError("connection closed")
    fileno = getattr(dbapi_conn, "fileno", None)
    if fileno is None:
        return
    try:
        readable, _, _ = select.select([fileno()], [], [], 0)
    except (OSError, ValueError) as exc:
        raise DisconnectionError("connection socket is gone") from exc
    if readable:
        raise DisconnectionError("server closed the idle connection")


class EnvelopeSession(Session):
    """A session whose first ``begin()`` in a request may take over the transaction the request
    envelope opened to look up the caller's token (``app.web``): the use case then commits the
    look-up and its own work as ONE transaction instead of two. Nothing else changes — the
    use case's ``with session.begin():`` still commits on success and rolls back on an error, a
    second ``begin()`` starts a new transaction, and an envelope transaction nobody took over
    (a read-only view, a refused request) is rolled back when the request's session closes."""

    def begin(self, nested: bool = False) -> Any:
        envelope = self.info.pop("envelope_transaction", None)
        if envelope is not None and not nested and envelope is self.get_transaction() and envelope.is_active:
            return envelope
        if envelope is not None and self.in_transaction():
            # Not taken over (a nested begin, or a stale marker): end the envelope's read first.
            self.rollback()
        return super().begin(nested=nested)

    def begin_envelope(self) -> bool:
        """Open the envelope transaction; False when it is not used (on SQLite every transaction
        takes the write lock, so a read there stays as short as it is)."""
        if self.in_transaction() or self.get_bind().dialect.name != "postgresql":
            return False
        self.info["envelope_transaction"] = super().begin()
        return True


class Database:
    """The engine and session factory of the current app."""

    metadata = Base.metadata

    def init_app(self, app: Flask) -> None:
        engine = make_engine(app.config["DATABASE_URL"])
        app.extensions["db.engine"] = engine
        # autobegin=False: a session does nothing outside ``with session.begin():`` — the
        # service that owns the use case owns its one transaction.
        # session.info["receipt_channels"] (R21): the channels with a receipt template, on which the
        # non-money notices a service writes in its own transaction are pushed (notify.person_notices).
        receipt = tuple(channel for channel, key in (("wechat", "WECHAT_TEMPLATE_RECEIPT"),
                                                      ("alipay", "ALIPAY_TEMPLATE_RECEIPT")) if app.config.get(key))
        app.extensions["db.sessionmaker"] = sessionmaker(engine, class_=EnvelopeSession, expire_on_commit=False,
                                                         autobegin=False, info={"receipt_channels": receipt})

    @property
    def engine(self) -> Engine:
        return current_app.extensions["db.engine"]

    def new_session(self) -> Session:
        return current_app.extensions["db.sessionmaker"]()

    def request_session(self) -> Session:
        """The session of the current request or job (closed at app-context teardown)."""
        if "db_session" not in g:
            g.db_session = self.new_session()
        return g.db_session

    @staticmethod
    def close_request_session(_exc: BaseException | None = None) -> None:
        """Close the request's session at app-context teardown. When the database went away under
        the request, closing rolls back on a dead connection and raises; that must not escape:
        an exception out of teardown replaces the answer already made (a 503, or the view's own)
        with a server error. The session's connections are invalidated instead — the pool opens
        new ones — and the failure is logged. Anything but a database error is a bug and raised."""
        close_at_teardown(g.pop("db_session", None))


def close_at_teardown(closable: Session | Connection | None) -> None:
    """Close a request's session or connection; on a database error (a dead connection) invalidate
    it instead of raising — see ``Database.close_request_session``."""
    if closable is None:
        return
    try:
        closable.close()
    except DBAPIError as exc:
        log.warning("closing the request's database session failed: %s", type(exc).__name__)
        closable.invalidate()


db = Database()


def redis_client() -> Any | None:
    """The Redis client, or None in the embedded default (no ``REDIS_URL``)."""
    return current_app.extensions.get("redis")


def init_redis(app: Flask) -> None:
    url = app.config.get("REDIS_URL")
    if url:
        import redis

        app.extensions["redis"] = redis.Redis.from_url(
            url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
        )


# When the shared (Redis) storage fails, these groups refuse the request (503): they guard the
# ID-number checks (identity verification, binding), where a limit that silently stops counting
# would let someone test ID numbers at full speed. Every other group keeps counting in this
# process's memory (looser by the number of processes, never unlimited) and logs that it does.
FAIL_CLOSED_GROUPS = frozenset({"identity", "binding"})
FALLBACK_LOG_EVERY_SECONDS = 30.0


class RateLimiter:
    """Per-user and per-IP limits on endpoint groups (R19), on the ``limits`` library (the core of
    Flask-Limiter): Redis storage when configured, memory otherwise."""

    def __init__(self, storage_uri: str, per_user: tuple[int, int] | None, per_ip: tuple[int, int] | None):
        self.storage = storage_from_string(storage_uri)
        self.strategy = MovingWindowRateLimiter(self.storage)
        self.per_user = parse_many(f"{per_user[0]}/{per_user[1]} seconds")[0] if per_user else None
        self.per_ip = parse_many(f"{per_ip[0]}/{per_ip[1]} seconds")[0] if per_ip else None
        self.shared = not storage_uri.startswith("memory://")
        self._fallback: MovingWindowRateLimiter | None = None
        self._fallback_logged_at = 0.0

    def hit(self, group: str, user_key: str | None, ip: str) -> int | None:
        """Count one request; return seconds to wait when a limit is exceeded, else None.

        If the shared storage fails: ``UpstreamUnavailable`` (503) for ``FAIL_CLOSED_GROUPS``, else
        the count goes on in this process's memory. Never an unhandled Redis error."""
        if not self.shared:
            return self._hit(self.strategy, group, user_key, ip)
        try:
            return self._hit(self.strategy, group, user_key, ip)
        except Exception as exc:  # noqa: BLE001 — any storage failure is handled below, by group
            return self._storage_failed(exc, group, user_key, ip)

    def _storage_failed(self, exc: Exception, group: str, user_key: str | None, ip: str) -> int | None:
        from app import errors

        now = time.monotonic()
        if group in FAIL_CLOSED_GROUPS:
            log.warning("rate-limit storage unavailable (%s): %s refused (fail closed)", type(exc).__name__, group)
            raise errors.limit_cannot_count() from None
        if now - self._fallback_logged_at > FALLBACK_LOG_EVERY_SECONDS:
            self._fallback_logged_at = now
            log.warning("rate-limit storage unavailable (%s): counting %s in process memory (fail local)",
                        type(exc).__name__, group)
        if self._fallback is None:
            self._fallback = MovingWindowRateLimiter(storage_from_string("memory://"))
        return self._hit(self._fallback, group, user_key, ip)

    def _hit(self, strategy: MovingWindowRateLimiter, group: str, user_key: str | None, ip: str) -> int | None:
        checks = []
        if self.per_user is not None and user_key is not None:
            checks.append((self.per_user, f"{group}:user:{user_key}"))
        if self.per_ip is not None:
            checks.append((self.per_ip, f"{group}:ip:{ip}"))
        for item, key in checks:
            if not strategy.hit(item, key):
                reset_at, _remaining = strategy.get_window_stats(item, key)
                return max(1, int(reset_at - time.time()) + 1)
        return None


def init_rate_limiter(app: Flask) -> None:
    uri = app.config.get("REDIS_URL") or "memory://"
    app.extensions["ratelimiter"] = RateLimiter(uri, app.config["RATE_PER_USER"], app.config["RATE_PER_IP"])


@contextmanager
def app_session() -> Iterator[Session]:
    """A fresh session for CLI commands and workers (outside any request)."""
    session = db.new_session()
    try:
        yield session
    finally:
        session.close()
