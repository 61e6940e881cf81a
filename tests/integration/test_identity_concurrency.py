"""Accounts linking one person at the same moment (R21): every account but the first to commit
finds the earlier ones, so the person's inbox gets one identity notice per further account."""

from __future__ import annotations

from sqlalchemy import func, select

from app.demo import OWNER
from app.extensions import app_session
from models import Notice, User
from tests.helpers import bearer, random_openid, sign_in_wechat
from tests.integration.test_settlement_concurrency import together

ACCOUNTS = 8


def test_accounts_linking_one_person_at_once_each_leave_a_notice_but_the_first(app, client, sandbox, demo):
    requests = []
    for _ in range(ACCOUNTS):
        openid = random_openid()
        token = sign_in_wechat(client, sandbox, openid)["access_token"]
        sandbox.set_wechat_identity(openid, "张伟", OWNER)
        body = {"name": "张伟", "id_number": OWNER,
                "proof": {"wechat_realname_code": sandbox.issue_wechat_realname_code(openid)}}
        requests.append((token, body))

    results = together(app, [lambda c, t=t, b=b: c.post("/api/v1/me/identity", json=b, headers=bearer(t))
                             for t, b in requests])

    assert [status for status, _ in results] == [200] * ACCOUNTS, results
    with app_session() as session, session.begin():
        linked = session.scalar(select(func.count()).select_from(User).where(User.person_id.is_not(None)))
        notices = session.scalar(select(func.count()).select_from(Notice).where(Notice.kind == "identity"))
    assert linked == ACCOUNTS
    assert notices == ACCOUNTS - 1
