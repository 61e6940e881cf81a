"""Fault (a): a settlement's PostgreSQL backend is terminated mid-transaction (``pg_terminate_backend``
from a hook) → the client gets a retryable 503, nothing partial is stored, and the same request,
signed again, settles exactly once. Also: idle pooled connections cut while ``pool_pre_ping`` is off
cost one 503, never a 500.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import create_engine, event, func, select, text

from app.extensions import app_session
from models import Journal, LedgerEntry, Notice, Payment, Settlement, Voucher
from tests.money_helpers import (
    CHILD,
    OWNER,
    assert_ledger_clean,
    balance,
    drug,
    fresh,
    issue,
    make_binding,
    person_id,
    settle,
    sign_in,
)

pytestmark = pytest.mark.skipif(not os.environ.get("TEST_DATABASE_URL"),
                                reason="terminating a backend needs PostgreSQL (TEST_DATABASE_URL)")


def _counts(app):
    with app_session() as s, s.begin():
        return {model.__tablename__: s.scalar(select(func.count()).select_from(model))
                for model in (Settlement, Payment, Journal, LedgerEntry, Notice)} | {
            "vouchers_used": s.scalar(select(func.count()).select_from(Voucher).where(Voucher.used_at.is_not(None)))}


class Killer:
    """Terminates the backend of the connection that is about to run the first statement matching
    ``marker`` (from another connection, as an operator or a failover would)."""

    def __init__(self, app, marker: str, times: int = 1):
        self.engine = app.extensions["db.engine"]
        self.admin = create_engine(app.config["DATABASE_URL"], isolation_level="AUTOCOMMIT", poolclass=None)
        self.marker, self.left, self.killed = marker, times, []
        event.listen(self.engine, "before_cursor_execute", self.hook)

    def hook(self, conn, _cursor, statement, *_args):
        if self.left and self.marker in statement:
            self.left -= 1
            pid = conn.connection.dbapi_connection.info.backend_pid
            with self.admin.connect() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            self.killed.append(pid)

    def close(self):
        event.remove(self.engine, "before_cursor_execute", self.hook)
        self.admin.dispose()


@pytest.mark.parametrize("marker", ["INSERT INTO ledger_entries", "INSERT INTO notices", "UPDATE vouchers"])
def test_a_settlement_whose_backend_is_killed_mid_transaction_is_a_503_and_the_retry_settles_once(
        app, client, sandbox, demo, marker):
    fresh(app)
    make_binding(app, OWNER, CHILD, "child")
    owner = sign_in(client, sandbox, OWNER)
    code = issue(client, owner, person_id(app, CHILD))
    before_balance, before = balance(app, OWNER), _counts(app)
    killer = Killer(app, marker)
    try:
        body = {"out_no": "OUT-CUT-1", "items": [drug(12_345)]}
        cut = settle(client, code, **body)
    finally:
        killer.close()
    assert killer.killed, f"no statement matched {marker!r}"
    assert cut.status_code == 503, cut.get_json()
    assert cut.headers["Retry-After"] == "2"
    assert cut.get_json()["error"] == {
        "code": "UPSTREAM_UNAVAILABLE", "message": cut.get_json()["error"]["message"],
        "details": {"unavailable": "database", "retry_after": 2}}
    # nothing partial: no settlement, payment, journal, ledger line, notice; voucher unused; balance kept
    assert _counts(app) == before and balance(app, OWNER) == before_balance
    # the institution signs the same request again (a new nonce): it settles, once
    retried = settle(client, code, **body)
    assert retried.status_code == 201, retried.get_json()
    again = settle(client, code, **body)
    assert again.status_code in (200, 201) and again.get_json()["settlement_no"] == retried.get_json()["settlement_no"]
    assert _counts(app)["settlements"] == before["settlements"] + 1
    assert balance(app, OWNER) == before_balance - retried.get_json()["copay_fen"]
    assert_ledger_clean(app)


def test_idle_connections_cut_without_pre_ping_cost_at_most_one_503(make_app, sandbox, demo):
    """``pool_pre_ping`` may be turned off for speed (issue 13): a pool of dead connections must
    still give 503s, not 500s, and heal by itself (SQLAlchemy invalidates the pool on a disconnect)."""
    from sqlalchemy.orm import sessionmaker

    from app.extensions import make_engine
    from tests.helpers import bearer, sign_in_wechat

    app = make_app()
    engine = make_engine(app.config["DATABASE_URL"], pool_pre_ping=False, pool_size=4)
    pids: set[int] = set()
    event.listen(engine, "connect", lambda dbapi_conn, _record: pids.add(dbapi_conn.info.backend_pid))
    app.extensions["db.engine"] = engine
    app.extensions["db.sessionmaker"] = sessionmaker(engine, expire_on_commit=False, autobegin=False)
    client = app.test_client()
    tokens = [sign_in_wechat(client, sandbox)["access_token"] for _ in range(4)]
    assert pids  # the app's idle pool holds connections: cut every one of them
    admin = create_engine(app.config["DATABASE_URL"], isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        cut = conn.execute(text("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                                "WHERE pid = ANY(:pids)"), {"pids": sorted(pids)}).scalar()
    admin.dispose()
    assert cut == len(pids)
    statuses = [client.get("/api/v1/me", headers=bearer(t)).status_code for t in tokens * 2]
    assert 500 not in statuses
    # At most the first request meets the dead pool (503); every later one is served by a new connection.
    assert statuses.count(503) <= 1 and statuses[1:] == [200] * 7, statuses
    engine.dispose()


def test_get_me_whose_backend_is_cut_during_its_one_statement_is_a_503_then_served(app, client, sandbox, demo):
    """GET /me's look-up runs on its own autocommit connection (issue 13): a backend cut under it is
    a retryable 503 like any other, and the next request is served on a fresh connection."""
    from tests.helpers import bearer

    token = sign_in(client, sandbox, OWNER)
    killer = Killer(app, "FROM auth_tokens JOIN users")
    try:
        cut = client.get("/api/v1/me", headers=bearer(token))
    finally:
        killer.close()
    assert killer.killed, "the look-up was not seen"
    assert cut.status_code == 503 and cut.headers["Retry-After"] == "2", cut.get_json()
    assert cut.get_json()["error"]["details"] == {"unavailable": "database", "retry_after": 2}
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200


def test_a_connection_that_served_get_me_goes_back_to_transactions(app, demo, sandbox, client):
    """The look-up's connection ran in autocommit; back in the pool it must run money transactions
    again: with one connection in the pool, the next checkout is that one, out of autocommit, and
    its work is one transaction (BEGIN … ROLLBACK undoes it)."""
    from datetime import UTC, datetime

    from app.extensions import make_engine
    from app.services.auth import authenticate_alone
    from app.services.identity import ME_BY_TOKEN

    token = sign_in(client, sandbox, OWNER)
    engine = make_engine(app.config["DATABASE_URL"], pool_size=1, max_overflow=0)
    try:
        assert authenticate_alone(engine, token, datetime.now(UTC), ME_BY_TOKEN).kind == "user"
        with engine.connect() as connection:
            driver = connection.connection.driver_connection
            assert driver.autocommit is False
            connection.execute(text("CREATE TEMPORARY TABLE t_after_me (x int)"))
            connection.execute(text("INSERT INTO t_after_me VALUES (1)"))
            assert driver.info.transaction_status.name == "INTRANS"
            connection.rollback()
            assert connection.execute(text("SELECT to_regclass('pg_temp.t_after_me')")).scalar() is None
    finally:
        engine.dispose()
