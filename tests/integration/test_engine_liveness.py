"""Pooled connections are checked for liveness without a round trip (issue 13: no pool_pre_ping).

A connection the server closed while it sat in the pool must be thrown away at checkout, so the
next request runs on a fresh connection instead of failing; and a live connection costs no extra
statement or transaction at checkout.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import event, text

from app.extensions import make_engine


@pytest.fixture
def pg_engine(postgres, database_url):
    if not postgres:
        pytest.skip("needs PostgreSQL (TEST_DATABASE_URL): the check looks at a server-closed socket")
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def test_a_connection_the_server_closed_in_the_pool_is_replaced_and_the_request_goes_on(pg_engine, database_url):
    with pg_engine.connect() as conn:
        first_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    killer = make_engine(database_url)
    with killer.begin() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first_pid}).scalar_one()
    killer.dispose()
    time.sleep(0.3)  # the FATAL notice and EOF reach the pooled socket

    with pg_engine.connect() as conn:  # no OperationalError: the dead one was discarded at checkout
        second_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert second_pid != first_pid


def test_checking_out_a_live_connection_sends_nothing_to_the_server(pg_engine, monkeypatch):
    pings = []
    monkeypatch.setattr(pg_engine.dialect, "do_ping", lambda dbapi_conn: pings.append(dbapi_conn) or True)
    with pg_engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    sent = []
    event.listen(pg_engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert sent == ["SELECT pg_backend_pid()"] and pings == []
