"""Where the benchmarks run: scratch PostgreSQL databases made on the server of ``BENCH_DATABASE_URL``
(default the local one), dropped when the benchmark ends, whatever happens (callers drop in
``finally``); and the Redis database ``BENCH_REDIS_URL`` (one default for every benchmark), which a
benchmark empties before and after it runs."""

from __future__ import annotations

import os
import uuid

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.config import normalize_database_url

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/6"


def bench_server() -> str:
    """The PostgreSQL server the benchmarks make their databases on."""
    return normalize_database_url(os.environ.get("BENCH_DATABASE_URL", DEFAULT_SERVER))


def bench_redis() -> str:
    """The Redis database the benchmarks may empty (two benchmarks run at once need two)."""
    return os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS)


class ScratchDatabase:
    """A new empty database named ``<prefix>_<random>`` on ``server``; ``drop()`` removes it."""

    def __init__(self, server: str, prefix: str = "copay_bench") -> None:
        self.name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.url = make_url(server).set(database=self.name).render_as_string(hide_password=False)
        self._admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))

    def analyze(self) -> None:
        """Fresh planner statistics, as autovacuum keeps them on a live server. Without this a
        benchmark phase runs on statistics taken when its tables were empty (a seed's ANALYZE): its
        foreign-key checks and cap look-ups then scan whole tables that grow as the phase writes —
        in session 3 that was ≈ 0.9 ms of PostgreSQL CPU per settlement that production would not pay."""
        engine = create_engine(self.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
        engine.dispose()

    def drop(self) -> None:
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self._admin.dispose()
