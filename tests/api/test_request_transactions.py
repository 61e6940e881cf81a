"""One transaction per request on the hot paths (issue 13): the token look-up of a signed-in
request runs inside the use case's own transaction, and checking out a connection costs none.

Counted with SQLAlchemy's connection events (what PostgreSQL's ``xact_commit`` counts too). On
SQLite the look-up keeps its own short read (every SQLite transaction takes the write lock), so
these run on PostgreSQL only.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import event, func, select, update

from app.extensions import app_session
from models import AuthToken, Voucher
from tests.api.test_settlements import created, family  # noqa: F401 — the fixture
from tests.helpers import bearer
from tests.money_helpers import drug, issue, settle


@pytest.fixture
def transactions(app, postgres):
    if not postgres:
        pytest.skip("PostgreSQL only: on SQLite the token look-up keeps its own read transaction")
    engine = app.extensions["db.engine"]
    counts = {"begin": 0, "commit": 0, "rollback": 0}

    def on(name):
        def count(*_args):
            counts[name] += 1
        return count

    listeners = [(name, on(name)) for name in counts]
    for name, fn in listeners:
        event.listen(engine, name, fn)
    yield counts
    for name, fn in listeners:
        event.remove(engine, name, fn)


def _reset(counts):
    for key in counts:
        counts[key] = 0


def test_a_voucher_issue_is_one_transaction_with_its_token_look_up(app, client, family, transactions):  # noqa: F811
    _reset(transactions)
    issue(client, family.owner_token, family.child)
    assert transactions == {"begin": 1, "commit": 1, "rollback": 0}


def test_get_me_is_one_statement_and_no_transaction_around_it(app, client, family, transactions,  # noqa: F811
                                                                monkeypatch):
    """GET /me reads everything it shows with its token look-up: one statement, which PostgreSQL
    runs as a transaction of its own (one snapshot) — no BEGIN before it, no ROLLBACK after it:
    two round trips less (issue 13)."""
    import psycopg._connection_base as base

    commands = []
    exec_command = base.BaseConnection._exec_command

    def spy(self, command, *args, **kwargs):
        commands.append(bytes(command) if isinstance(command, (bytes, bytearray)) else command)
        return exec_command(self, command, *args, **kwargs)

    sent = []
    engine = app.extensions["db.engine"]

    def record(_conn, _cursor, statement, *_args):
        sent.append(statement)

    client.get("/api/v1/me", headers=bearer(family.owner_token))  # the pool's connection is warm
    monkeypatch.setattr(base.BaseConnection, "_exec_command", spy)
    event.listen(engine, "before_cursor_execute", record)
    try:
        response = client.get("/api/v1/me", headers=bearer(family.owner_token))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert response.status_code == 200 and response.get_json()["person"]["status"] == "active"
    assert len(sent) == 1 and sent[0].lstrip().startswith("SELECT auth_tokens.user_id"), sent
    assert not [c for c in commands if c.split()[0] in (b"BEGIN", b"COMMIT", b"ROLLBACK")], commands


def test_get_me_refuses_a_revoked_token_without_a_transaction(app, client, family):  # noqa: F811
    with app_session() as s, s.begin():
        s.execute(update(AuthToken).values(revoked_at=datetime.now(UTC)))
    response = client.get("/api/v1/me", headers=bearer(family.owner_token))
    assert response.status_code == 401


def test_a_settlement_is_one_transaction_with_nonces_in_redis(app, client, family, transactions, redis_url):  # noqa: F811
    if not redis_url:
        pytest.skip("with nonces in the database a settlement has a second transaction for the nonce")
    created(settle(client, issue(client, family.owner_token, family.child), [drug(3_000)]))  # caches the secret
    code = issue(client, family.owner_token, family.child)
    _reset(transactions)
    created(settle(client, code, [drug(3_000)]))
    assert transactions == {"begin": 1, "commit": 1, "rollback": 0}


def test_a_revoked_token_is_refused_at_once_and_nothing_is_written(app, client, family, transactions):  # noqa: F811
    with app_session() as session, session.begin():
        session.execute(update(AuthToken).values(revoked_at=func.now()))
        before = session.scalar(select(func.count()).select_from(Voucher))
    _reset(transactions)
    response = client.post("/api/v1/vouchers", json={"person_id": family.child}, headers=bearer(family.owner_token))
    assert response.status_code == 401
    assert transactions["commit"] == 0  # the look-up's transaction was rolled back, not committed
    with app_session() as session, session.begin():
        assert session.scalar(select(func.count()).select_from(Voucher)) == before


def test_a_refused_use_case_rolls_back_the_look_up_with_it(app, client, family, transactions):  # noqa: F811
    _reset(transactions)
    response = client.post("/api/v1/vouchers", json={"person_id": 987654321}, headers=bearer(family.owner_token))
    assert response.status_code == 404
    assert transactions["commit"] == 0 and transactions["begin"] == 1


def test_a_settlement_is_five_statements_and_its_writes_are_one(app, client, family, transactions):  # noqa: F811
    created(settle(client, issue(client, family.owner_token, family.child), [drug(3_000)]))  # caches the secret
    code = issue(client, family.owner_token, family.child)
    sent = []
    engine = app.extensions["db.engine"]

    def record(_conn, _cursor, statement, *_args):
        sent.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", record)
    try:
        created(settle(client, code, [drug(3_000)]))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    # the voucher (with filings and certifications), the bindings, the cap row, the accounts (with
    # binding usage), then every write: settlement, voucher use, payments, balances, journal and
    # entries, cap and binding usage, notices and deliveries — in one statement
    assert len(sent) == 5, sent
    writes = [s for s in sent if "INSERT INTO" in s and "ON CONFLICT (beneficiary_person_id, year)" not in s]
    assert len(writes) == 1 and all(f"INSERT INTO {table}" in writes[0] for table in (
        "settlements", "payments", "journals", "ledger_entries", "notices", "deliveries", "binding_usage")), writes
