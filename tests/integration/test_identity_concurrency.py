"""Accounts linking one person at the same moment (R21): every account but the first to commit
finds the earlier ones, so the person's inbox gets one identity notice per further account."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select, text

from app.demo import OWNER
from app.extensions import app_session
from models import Notice, User
from tests.helpers import (
    bearer,
    prove_identity_wechat,
    random_openid,
    realname_identity_body,
    sign_in_wechat,
    waiting_for_lock,
)
from tests.integration.test_settlement_concurrency import together
from tests.money_helpers import issue

ACCOUNTS = 8


def test_accounts_linking_one_person_at_once_each_leave_a_notice_but_the_first(app, client, sandbox, demo):
    requests = []
    for _ in range(ACCOUNTS):
        openid = random_openid()
        token = sign_in_wechat(client, sandbox, openid)["access_token"]
        body = realname_identity_body(sandbox, openid, "张伟", OWNER)
        requests.append((token, body))

    results = together(app, [lambda c, t=t, b=b: c.post("/api/v1/me/identity", json=b, headers=bearer(t))
                             for t, b in requests])

    assert [status for status, _ in results] == [200] * ACCOUNTS, results
    with app_session() as session, session.begin():
        linked = session.scalar(select(func.count()).select_from(User).where(User.person_id.is_not(None)))
        notices = session.scalar(select(func.count()).select_from(Notice).where(Notice.kind == "identity"))
    assert linked == ACCOUNTS
    assert notices == ACCOUNTS - 1


def test_phone_links_racing_a_new_reserved_number_never_outlive_it(app, client, sandbox, demo):
    """The window puts a new reserved number on file while holders of the old one link by phone:
    whatever the order, no sign-in stays linked by a number that is no longer on file (R21). A link
    judged by the old number before the update committed is ended by it; one judged after is refused."""
    from app.demo import DEMO_PHONES
    from tests.helpers import prove_phone_wechat

    tokens = []
    for _ in range(ACCOUNTS):
        openid = random_openid()
        token = sign_in_wechat(client, sandbox, openid)["access_token"]
        assert prove_phone_wechat(client, sandbox, token, openid, DEMO_PHONES[OWNER]).status_code == 200
        tokens.append(token)
    body = {"name": "张伟", "id_number": OWNER, "proof": {"phone": True}}
    calls = [lambda c, t=t: c.post("/api/v1/me/identity", json=body, headers=bearer(t)) for t in tokens]
    calls.insert(ACCOUNTS // 2, lambda c: c.post("/api/v1/staff/persons/phone",
                                                 json={"id_number": OWNER, "phone": "13900007777"},
                                                 headers=bearer(demo.tokens["window1"])))

    results = together(app, calls)

    assert {status for status, _ in results} <= {200, 422}, results
    with app_session() as session, session.begin():
        still = session.scalar(select(func.count()).select_from(User).where(User.person_id.is_not(None)))
    assert still == 0, results



def test_clerks_ending_links_while_accounts_link_and_a_new_number_lands_never_deadlock(app, client, sandbox, demo):
    """Staff's end of a link takes the person row, then the user row (LOCK_ORDER), like linking and a
    new reserved number: run together on one person, each ends or is refused, none waits on another
    for ever; the same link ended twice at once is ended once (one audit row, one notice)."""
    from models import AuditEvent

    linked, joining = [], []
    for i in range(ACCOUNTS):
        openid = random_openid()
        token = sign_in_wechat(client, sandbox, openid)["access_token"]
        body = realname_identity_body(sandbox, openid, "张伟", OWNER)
        if i % 2 == 0:  # linked before: the clerks end these
            assert client.post("/api/v1/me/identity", json=body, headers=bearer(token)).status_code == 200
            linked.append(client.get("/api/v1/me", headers=bearer(token)).get_json()["user"]["id"])
        else:  # they link while the clerks work
            joining.append((token, body))
    staff = bearer(demo.tokens["window1"])
    calls = [("end", lambda c, u=u: c.post(f"/api/v1/staff/identity-links/{u}/end", json={"reason": "本人申请"},
                                          headers=staff)) for u in linked + linked[:1]]
    calls += [("link", lambda c, t=t, b=b: c.post("/api/v1/me/identity", json=b, headers=bearer(t)))
              for t, b in joining]
    calls.insert(3, ("phone", lambda c: c.post("/api/v1/staff/persons/phone",
                                               json={"id_number": OWNER, "phone": "13900007777"}, headers=staff)))

    results = list(zip([kind for kind, _ in calls], together(app, [call for _, call in calls]), strict=True))

    assert sorted(status for kind, (status, _) in results if kind == "end") == [200] * len(linked) + [409], results
    assert {status for kind, (status, _) in results if kind != "end"} == {200}, results
    with app_session() as session, session.begin():
        still = set(session.scalars(select(User.id).where(User.person_id.is_not(None))))
        audited = session.scalar(select(func.count()).select_from(AuditEvent)
                                 .where(AuditEvent.action == "identity.unlink"))
        notices = session.scalars(select(Notice.content).where(Notice.kind == "identity")).all()
    assert still.isdisjoint(linked) and len(still) == len(joining)
    assert audited == len(linked)
    assert sum(1 for content in notices if content.get("event") == "unlinked") == len(linked)


@pytest.mark.postgres(reason="row locks and foreign-key checks: PostgreSQL")
def test_ending_a_link_while_its_code_is_being_settled_does_not_deadlock(app, client, sandbox, demo):
    """A settlement locks the voucher first, then writes rows naming the holder's person (the
    settlement, its payments, notices): PostgreSQL checks each such foreign key with FOR KEY SHARE on
    the person row. A clerk ending the holder's link at that moment locks the person, then the user,
    then ends the codes they hold — waiting on that voucher. The person lock must not block the
    settlement's key-share, or the two wait on each other until PostgreSQL kills one (deadlock_detected)."""
    openid = random_openid()
    token = sign_in_wechat(client, sandbox, openid)["access_token"]
    assert prove_identity_wechat(client, sandbox, token, openid, "张伟", OWNER).status_code == 200
    issue(client, token)
    user_id = client.get("/api/v1/me", headers=bearer(token)).get_json()["user"]["id"]

    ended: list[int] = []
    with app_session() as settling, settling.begin():
        person_id = settling.scalar(select(User.person_id).where(User.id == user_id))
        # The settlement's first lock: the voucher (FOR UPDATE).
        settling.execute(text("SELECT id FROM vouchers WHERE holder_user_id = :u FOR UPDATE"), {"u": user_id})
        clerk = threading.Thread(target=lambda: ended.append(app.test_client().post(
            f"/api/v1/staff/identity-links/{user_id}/end", json={"reason": "本人申请"},
            headers=bearer(demo.tokens["window1"])).status_code))
        clerk.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not waiting_for_lock("UPDATE vouchers%"):  # the clerk waits
            time.sleep(0.05)
        # Then the settlement writes a row naming the holder's person: the foreign key's check.
        settling.execute(text("SELECT id FROM persons WHERE id = :p FOR KEY SHARE"), {"p": person_id})
    clerk.join(20)
    assert ended == [200]
