"""The signed-in user's hot paths in few statements (issue 13): ``GET /me`` reads everything it shows
with its token look-up, a voucher is one read and one write after the look-up, a WeChat sign-in is
one statement on PostgreSQL — and each still refuses, audits and answers as before.

Statements are counted with SQLAlchemy's ``before_cursor_execute`` event (``BEGIN``/``COMMIT`` are
not statements there); SQLite runs some steps as separate statements, so both counts are given.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event, func, select, update

from app.extensions import app_session
from models import AuditEvent, AuthToken, User, Voucher
from tests.api.test_settlements import family  # noqa: F401 — the fixture
from tests.helpers import bearer, random_openid, sign_in_wechat
from tests.money_helpers import issue


@pytest.fixture
def statements(app):
    sent: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        if not statement.startswith("BEGIN"):  # SQLite's BEGIN IMMEDIATE (app.extensions)
            sent.append(" ".join(statement.split()))

    engine = app.extensions["db.engine"]
    event.listen(engine, "before_cursor_execute", record)
    yield sent
    event.remove(engine, "before_cursor_execute", record)


def test_get_me_is_one_statement_with_its_token_look_up(client, family, statements, postgres):  # noqa: F811
    statements.clear()
    response = client.get("/api/v1/me", headers=bearer(family.owner_token))
    assert response.status_code == 200
    assert len(statements) == 1, statements
    assert "FROM auth_tokens JOIN users" in statements[0] and "LEFT OUTER JOIN persons" in statements[0]
    body = response.get_json()
    assert body["user"]["verified"] is True and body["person"]["person_id"] == family.owner
    assert body["account"] == {"balance_fen": 350_000}


def test_get_me_refuses_a_revoked_or_expired_token_at_once(app, client, family):  # noqa: F811
    assert client.get("/api/v1/me", headers=bearer(family.owner_token)).status_code == 200
    with app_session() as session, session.begin():
        session.execute(update(AuthToken).values(revoked_at=func.now()))
    response = client.get("/api/v1/me", headers=bearer(family.owner_token))
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "UNAUTHENTICATED"
    with app_session() as session, session.begin():
        session.execute(update(AuthToken).values(revoked_at=None, expires_at=func.now()))
    assert client.get("/api/v1/me", headers=bearer(family.owner_token)).status_code == 401


def test_get_me_of_a_user_without_a_person(client, sandbox, statements):
    token = sign_in_wechat(client, sandbox)["access_token"]
    statements.clear()
    body = client.get("/api/v1/me", headers=bearer(token)).get_json()
    assert len(statements) == 1
    assert body["person"] is None and body["account"] is None and body["user"]["verified"] is False
    assert body["user"]["phone"] is None and body["user"]["must_prove_identity_again"] is False


def test_a_voucher_issue_is_a_look_up_a_read_and_one_write(app, client, family, statements, postgres):  # noqa: F811
    statements.clear()
    issue(client, family.owner_token, family.child)
    writes = [s for s in statements if s.startswith(("INSERT", "WITH"))]
    if postgres:
        assert len(statements) == 3, statements
        assert writes[0].startswith("WITH voucher AS (INSERT INTO vouchers") and "INSERT INTO audit_events" in writes[0]
    else:
        assert len(statements) == 4, statements  # the voucher and its audit row: two inserts
    with app_session() as session, session.begin():
        voucher = session.scalar(select(Voucher))
        audit = session.scalar(select(AuditEvent).where(AuditEvent.action == "voucher.issue"))
    assert (audit.target_kind, audit.target_id, audit.actor_kind, audit.actor_id) == (
        "voucher", voucher.id, "user", voucher.holder_user_id)
    assert audit.details == {"person_id": family.child, "binding_id": voucher.binding_id}
    assert audit.request_id and audit.ip == "127.0.0.1"


def test_a_refused_voucher_writes_nothing(app, client, family):  # noqa: F811
    for someone, status in ((family.spouse, 404), (987_654_321, 404)):
        response = client.post("/api/v1/vouchers", json={"person_id": someone}, headers=bearer(family.owner_token))
        assert response.status_code == status
        assert response.get_json()["error"]["message"] == client.post(
            "/api/v1/vouchers", json={"person_id": 987_654_321},
            headers=bearer(family.owner_token)).get_json()["error"]["message"]  # R16: the same answer
    with app_session() as session, session.begin():
        assert session.scalar(select(func.count()).select_from(Voucher)) == 0
        assert session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "voucher.issue")) == 0


def _sign_ins(openid):
    with app_session() as session, session.begin():
        users = session.scalars(select(User).where(User.wechat_openid == openid)).all()
        audits = session.scalars(select(AuditEvent).where(AuditEvent.action == "auth.sign_in",
                                                          AuditEvent.actor_id.in_([u.id for u in users]))
                                 .order_by(AuditEvent.id)).all()
        tokens = session.scalars(select(AuthToken).where(AuthToken.user_id.in_([u.id for u in users]))
                                 .order_by(AuthToken.id)).all()
        return users, [(a.details, a.actor_kind, a.request_id is not None, a.ip) for a in audits], tokens


def test_a_wechat_sign_in_is_one_statement_on_postgresql(app, client, sandbox, statements, postgres):
    openid = random_openid()
    statements.clear()
    first = sign_in_wechat(client, sandbox, openid)
    assert len(statements) == (1 if postgres else 4), statements
    users, audits, tokens = _sign_ins(openid)
    assert len(users) == 1 and users[0].id == first["user"]["id"] and users[0].last_login_at is not None
    key = users[0].wechat_session_key_enc
    assert key and users[0].created_at == users[0].last_login_at
    assert audits == [({"channel": "wechat", "new_user": True}, "user", True, "127.0.0.1")]
    assert sorted((t.kind, t.chain_id == tokens[0].chain_id) for t in tokens) == [("access", True), ("refresh", True)]
    assert client.get("/api/v1/me", headers=bearer(first["access_token"])).status_code == 200

    statements.clear()
    second = sign_in_wechat(client, sandbox, openid)
    assert len(statements) == (1 if postgres else 4), statements
    users, audits, tokens = _sign_ins(openid)
    assert len(users) == 1 and second["user"] == first["user"]
    assert users[0].wechat_session_key_enc != key and users[0].last_login_at > users[0].created_at
    assert audits[1][0] == {"channel": "wechat", "new_user": False}
    assert len(tokens) == 4 and len({t.chain_id for t in tokens}) == 2  # a new chain per sign-in


def test_a_sign_in_without_a_unionid_keeps_the_one_stored(app, client, sandbox):
    openid = random_openid()
    user_id = sign_in_wechat(client, sandbox, openid)["user"]["id"]
    with app_session() as session, session.begin():
        session.execute(update(User).where(User.id == user_id).values(wechat_unionid="u-kept"))
    sign_in_wechat(client, sandbox, openid)
    with app_session() as session, session.begin():
        assert session.get(User, user_id).wechat_unionid == "u-kept"


def test_racing_first_sign_ins_of_one_identity_make_one_user(app, sandbox, postgres):
    if not postgres:
        pytest.skip("SQLite serialises the two sign-ins (BEGIN IMMEDIATE)")
    openid = random_openid()
    codes = [sandbox.issue_wechat_login_code(openid) for _ in range(4)]
    barrier = threading.Barrier(len(codes))
    results: list[dict] = []

    def run(code):
        client = app.test_client()
        barrier.wait()
        response = client.post("/api/v1/auth/wechat", json={"code": code})
        results.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=run, args=(code,)) for code in codes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [status for status, _ in results] == [200] * len(codes), results
    assert len({body["user"]["id"] for _, body in results}) == 1
    users, audits, tokens = _sign_ins(openid)
    assert len(users) == 1 and len(audits) == len(codes) and len(tokens) == 2 * len(codes)
    assert sorted(details["new_user"] for details, *_ in audits) == [False] * (len(codes) - 1) + [True]
