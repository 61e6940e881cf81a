"""Private servers for the fault tests: a Redis and a PostgreSQL that each test may stop and start.

The machine's shared PostgreSQL (5432) and Redis (6379) are never stopped: other work uses them.
Each private server listens on a free loopback port, keeps its data under the test's tmp dir,
and is stopped when the test ends (whatever happened).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.servers import PG_BIN, PrivatePostgres, PrivateRedis, free_port


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15 server binaries are not installed")
    # Not under pytest's tmp dir: that is private to root, and the server runs as ``postgres``.
    base = Path(tempfile.mkdtemp(prefix="copay-private-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    server = PrivatePostgres(free_port(), base / "data")
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
