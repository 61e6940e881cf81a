"""An attacker's review of identity and binding (R2, R5, R11, R16, R21): what a stranger who knows a
victim's name, ID number, card number and phone number — none of them secrets — could still do.

Each test reproduces one finding on the code before its fix.
"""

from __future__ import annotations

from sqlalchemy import select

from app.demo import DEMO_PHONES, NEIGHBOUR, OWNER, SPOUSE
from tests.binding_helpers import PDF, bind, sign_in, upload
from tests.helpers import (
    bearer,
    me,
    prove_identity_wechat,
    prove_phone_wechat,
    random_openid,
    reserve_phone,
    sign_in_wechat,
    verify_identity,
)
from tests.money_helpers import issue, settle

# --- a phone link outlives the reserved number it was made with ---------------------------------


def test_a_phone_link_ends_when_the_window_gives_the_person_another_reserved_number(client, sandbox, demo):
    # Finding: the registry's reserved number of 张伟 is stale — his old number, since given by the
    # carrier to a stranger (numbers are recycled). The stranger proves that phone and links as 张伟
    # (the phone proof). 张伟 reads the "another account" notice, goes to the window as it tells him,
    # and staff put his new number on file. Before the fix nothing happened to the stranger's link:
    # he kept acting as 张伟 — reading his records, spending his account with a voucher of his own.
    victim = sign_in(client, sandbox, OWNER)  # 张伟 himself, by WeChat's real-name check
    openid = random_openid()
    stranger = sign_in_wechat(client, sandbox, openid)["access_token"]
    assert prove_phone_wechat(client, sandbox, stranger, openid, DEMO_PHONES[OWNER]).status_code == 200
    assert verify_identity(client, stranger, "张伟", OWNER, {"phone": True}).status_code == 200
    assert client.post("/api/v1/vouchers", json={}, headers=bearer(stranger)).status_code == 201

    answer = reserve_phone(client, demo, OWNER, "13900007777")

    seen = me(client, stranger)
    assert seen["user"]["verified"] is False and seen["person"] is None
    assert seen["user"]["must_prove_identity_again"] is True
    assert answer["phone_links_ended"] == 1
    refused = client.post("/api/v1/vouchers", json={}, headers=bearer(stranger))
    assert refused.status_code == 403, refused.get_json()
    assert client.get("/api/v1/bindings", headers=bearer(stranger)).status_code == 403
    # 张伟's own sign-in (real-name proof) is untouched; the stranger's phone proves nothing any more.
    assert me(client, victim)["user"]["verified"] is True
    again = verify_identity(client, stranger, "张伟", OWNER, {"phone": True})
    assert again.get_json()["error"]["details"]["reason"] == "phone_does_not_prove_this_identity"


def test_a_phone_link_on_the_new_number_and_links_by_other_proofs_stay(client, sandbox, demo):
    openid = random_openid()
    holder = sign_in_wechat(client, sandbox, openid)["access_token"]
    assert prove_phone_wechat(client, sandbox, holder, openid, DEMO_PHONES[OWNER]).status_code == 200
    assert verify_identity(client, holder, "张伟", OWNER, {"phone": True}).status_code == 200
    realname = sign_in(client, sandbox, OWNER)
    # The same number saved again (a clerk re-typing it) ends nothing.
    assert reserve_phone(client, demo, OWNER, DEMO_PHONES[OWNER])["phone_links_ended"] == 0
    assert me(client, holder)["user"]["verified"] is True
    # 李娜 reserves the same number too: 张伟's link made while it was his alone stays (docs/identity.md).
    assert reserve_phone(client, demo, SPOUSE, DEMO_PHONES[OWNER])["phone_links_ended"] == 0
    assert me(client, holder)["user"]["verified"] is True
    # A new number for 张伟 that the phone-linked user has proven since: that link stays too.
    assert prove_phone_wechat(client, sandbox, holder, openid, "13900007777").status_code == 200
    assert reserve_phone(client, demo, OWNER, "13900007777")["phone_links_ended"] == 0
    assert me(client, holder)["user"]["verified"] is True
    assert me(client, realname)["user"]["verified"] is True


def test_an_ended_phone_link_is_audited_and_the_person_is_told(app, client, sandbox, demo):
    from app.extensions import app_session
    from models import AuditEvent, Notice

    openid = random_openid()
    stranger = sign_in_wechat(client, sandbox, openid)["access_token"]
    prove_phone_wechat(client, sandbox, stranger, openid, DEMO_PHONES[OWNER])
    assert verify_identity(client, stranger, "张伟", OWNER, {"phone": True}).status_code == 200
    stranger_id = me(client, stranger)["user"]["id"]
    reserve_phone(client, demo, OWNER, "13900007777")
    with app_session() as session, session.begin():
        event = session.scalar(select(AuditEvent).where(AuditEvent.action == "person.phone"))
        assert event.details["phone_links_ended"] == [stranger_id]
        notices = session.scalars(select(Notice).where(Notice.kind == "identity")).all()
        assert any(n.content.get("event") == "unlinked" for n in notices)


def test_a_voucher_issued_before_a_new_reserved_number_ended_the_phone_link_no_longer_pays(client, sandbox, demo):
    # Finding: ending a phone link left the codes its holder had issued working. The new holder of a
    # recycled number links as 张伟 by phone and issues a code; 张伟 has the window put his new number
    # on file, which ends that link — and the code (alive VOUCHER_TTL_SECONDS) still spent his account.
    openid = random_openid()
    holder = sign_in_wechat(client, sandbox, openid)["access_token"]
    assert prove_phone_wechat(client, sandbox, holder, openid, DEMO_PHONES[OWNER]).status_code == 200
    assert verify_identity(client, holder, "张伟", OWNER, {"phone": True}).status_code == 200
    code = issue(client, holder)
    assert reserve_phone(client, demo, OWNER, "13900007777")["phone_links_ended"] == 1
    refused = settle(client, code)
    assert refused.status_code == 422, refused.get_json()
    assert refused.get_json()["error"]["code"] == "VOUCHER_EXPIRED"


# --- a stale read of the user overwrote a link made meanwhile -----------------------------------


def test_a_link_made_while_the_platform_was_asked_is_not_overwritten(app, client, sandbox, demo):
    # Finding: verify_identity reads the user, asks WeChat (outside any transaction), then locks the
    # user row — but the session kept the first read (expire_on_commit=False, and Session.get with
    # FOR UPDATE does not refresh an object it already holds). A link committed meanwhile (here the
    # window's, to 李娜) was not seen: the user was moved to 张伟, past "already verified as another
    # person", and 李娜's link silently vanished.
    from app.extensions import app_session
    from models import User

    openid = random_openid()
    token = sign_in_wechat(client, sandbox, openid)["access_token"]
    user_id = me(client, token)["user"]["id"]
    wechat = app.extensions["domain"].platforms.wechat
    asked = wechat.check_real_name

    def window_links_meanwhile(*args):
        answer = asked(*args)
        with app_session() as session, session.begin():
            from models import Person

            pii = app.extensions["domain"].pii
            spouse = session.scalar(select(Person).where(Person.id_number_bidx == pii.blind_index(
                SPOUSE, kind="id_number")))
            user = session.get_one(User, user_id)
            user.person_id, user.identity_proof = spouse.id, "window"
        return answer

    wechat.check_real_name = window_links_meanwhile
    try:
        response = prove_identity_wechat(client, sandbox, token, openid, "张伟", OWNER)
    finally:
        del wechat.check_real_name
    assert response.status_code == 409, response.get_json()
    assert me(client, token)["person"]["name"] == "*娜"


# --- a pending binding told a stranger that the beneficiary is suspended ------------------------


def test_a_pending_binding_does_not_tell_a_stranger_the_other_partys_suspension(client, sandbox, demo):
    # Finding: 王芳 is suspended as a beneficiary (staff's finding about her: e.g. reselling drugs).
    # Any eligible owner who knows her name, ID number and card number "binds" her as a parent with
    # any PDF: the binding only waits for review, staff will reject it, she never agreed — but the
    # answer said "suspended": true, so the stranger learned of her suspension, then withdrew.
    assert client.post("/api/v1/staff/suspensions", json={"beneficiary_id_number": NEIGHBOUR, "reason": "倒卖药品"},
                       headers=bearer(demo.tokens["admin1"])).status_code == 201
    stranger = sign_in(client, sandbox, OWNER)
    document = upload(client, stranger, PDF, "proof.pdf").get_json()["id"]
    response = bind(client, stranger, NEIGHBOUR, "parent", [document])
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    assert created["status"] == "pending_review"
    assert created["suspended"] is False
    shown = client.get(f"/api/v1/bindings/{created['id']}", headers=bearer(stranger)).get_json()
    assert shown["suspended"] is False
    listed = client.get("/api/v1/bindings", headers=bearer(stranger)).get_json()["items"]
    assert [b["suspended"] for b in listed] == [False]
    # Staff reviewing it see the suspension (it bears on the review).
    staff = client.get(f"/api/v1/staff/bindings/{created['id']}", headers=bearer(demo.tokens["window1"]))
    assert staff.get_json()["suspended"] is True
    # Once staff approve it the binding is hers and his, and the owner reads that it does not pay.
    approved = client.post(f"/api/v1/staff/bindings/{created['id']}/approve", json={"reason": "ok"},
                           headers=bearer(demo.tokens["window1"]))
    assert approved.status_code == 200, approved.get_json()
    assert client.get(f"/api/v1/bindings/{created['id']}", headers=bearer(stranger)).get_json()["suspended"] is True


def test_a_pending_binding_shows_the_callers_own_suspension(client, sandbox, demo):
    owner = sign_in(client, sandbox, OWNER)
    assert client.post("/api/v1/staff/suspensions", json={"owner_id_number": OWNER, "reason": "倒卖药品"},
                       headers=bearer(demo.tokens["admin1"])).status_code == 201
    document = upload(client, owner, PDF, "proof.pdf").get_json()["id"]
    created = bind(client, owner, NEIGHBOUR, "parent", [document]).get_json()
    assert created["status"] == "pending_review" and created["suspended"] is True
