"""``/api/v1/notifications`` (the inbox) and ``/api/v1/staff/notices`` (the push log) — R15, R16."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.extensions import app_session
from models import AuditEvent
from tests.conftest import TEMPLATE_DEDUCTION
from tests.helpers import bearer, random_openid, sign_in_wechat, signed_in_person
from tests.notify_helpers import NotifyWorld

URL = "/api/v1/notifications"
STAFF_URL = "/api/v1/staff/notices"


@pytest.fixture
def world(app, sandbox):
    yield NotifyWorld(app, sandbox)
    sandbox.clear_faults()


@pytest.fixture
def notifier(app):
    return app.extensions["domain"].notifier


def token_of(client, sandbox, party):
    return bearer(signed_in_person(client, sandbox, party.name, party.id_number, party.openid))


def test_the_owner_sees_each_deduction_with_its_push_status_R15(client, sandbox, world, notifier):
    owner, child = world.person("张伟"), world.person("张小明")
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    settled = world.settle(child, [(owner, "copay", 1230)])
    notifier.drain()

    response = client.get(URL, headers=token_of(client, sandbox, owner))

    assert response.status_code == 200
    (item,) = response.get_json()["items"]
    assert item["kind"] == "deduction" and item["settlement_no"] == settled.settlement_no
    assert (item["amount_fen"], item["balance_after_fen"]) == (1230, 500000 - 1230)
    assert (item["beneficiary"], item["relationship"]) == ("**明", "child")
    assert item["created_at"].endswith("+08:00") and item["read_at"] is None
    assert item["deliveries"] == [{"channel": "wechat", "state": "sent", "error": None}]
    assert response.get_json()["next_cursor"] is None


def test_a_notice_is_in_the_inbox_whatever_happened_to_the_push_R15(client, sandbox, world, notifier):
    owner, child = world.person("张伟", alipay=True), world.person("张小明")
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    sandbox.inject_fault("wechat.subscribe_send", errcode=-1)
    world.settle(child, [(owner, "copay", 100)])
    notifier.drain()

    items = client.get(URL, headers=token_of(client, sandbox, owner)).get_json()["items"]
    # Signing in from a further account also put an identity notice in the inbox (R21).
    (item,) = [i for i in items if i["kind"] != "identity"]

    assert item["deliveries"] == [
        {"channel": "alipay", "state": "no_consent", "error": "no_consent"},
        {"channel": "wechat", "state": "pending", "error": None},  # retrying
    ]


def test_an_attempt_in_flight_shows_as_pending(client, sandbox, world, app):
    owner, child = world.person("张伟"), world.person("张小明")
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    (delivery_id,) = world.settle(child, [(owner, "copay", 100)]).delivery_ids
    deliverer = app.extensions["domain"].notifier.deliverer
    deliverer._claim_many([delivery_id])  # claimed, not yet sent

    (item,) = client.get(URL, headers=token_of(client, sandbox, owner)).get_json()["items"]

    assert world.delivery(delivery_id).state == "sending"
    assert item["deliveries"] == [{"channel": "wechat", "state": "pending", "error": None}]


def test_the_beneficiary_sees_the_receipt_and_the_owner_does_not_R16(client, sandbox, world, notifier):
    owner, child = world.person("张伟"), world.person("张小明")
    world.settle(child, [(owner, "copay", 800)])

    child_items = client.get(URL, headers=token_of(client, sandbox, child)).get_json()["items"]
    owner_items = client.get(URL, headers=token_of(client, sandbox, owner)).get_json()["items"]

    assert [(i["kind"], i["amount_fen"], i["balance_after_fen"]) for i in child_items] == [("receipt", 800, None)]
    assert [i["kind"] for i in owner_items] == ["deduction"]


def test_the_inbox_pages_newest_first_without_gaps_or_repeats(client, sandbox, world):
    owner, child = world.person("张伟"), world.person("张小明")
    numbers = [world.settle(child, [(owner, "copay", 100 + i)]).settlement_no for i in range(5)]
    headers = token_of(client, sandbox, owner)

    seen, cursor = [], None
    for _ in range(5):
        page = client.get(URL, query_string={"limit": 2, **({"cursor": cursor} if cursor else {})},
                          headers=headers).get_json()
        seen += [i["settlement_no"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == list(reversed(numbers))


@pytest.mark.parametrize("query", [{"cursor": "not-a-cursor"}, {"limit": 0}, {"limit": 1000}])
def test_a_bad_cursor_or_limit_is_400(client, sandbox, query):
    headers = bearer(sign_in_wechat(client, sandbox)["access_token"])

    assert client.get(URL, query_string=query, headers=headers).status_code == 400


def test_marking_read_keeps_the_first_reading_time(client, sandbox, world):
    owner, child = world.person("张伟"), world.person("张小明")
    world.settle(child, [(owner, "copay", 100)])
    headers = token_of(client, sandbox, owner)
    (item,) = client.get(URL, headers=headers).get_json()["items"]

    first = client.post(f"{URL}/{item['id']}/read", headers=headers)
    second = client.post(f"{URL}/{item['id']}/read", headers=headers)

    assert first.status_code == 200 and first.get_json()["read_at"].endswith("+08:00")
    assert second.get_json()["read_at"] == first.get_json()["read_at"]
    assert client.get(URL, headers=headers).get_json()["items"][0]["read_at"] == first.get_json()["read_at"]


def test_nobody_reads_or_marks_someone_elses_notice_R16(client, sandbox, world):
    owner, child = world.person("张伟"), world.person("张小明")
    neighbour = world.person("王芳")
    world.settle(child, [(owner, "copay", 100)])
    (item,) = client.get(URL, headers=token_of(client, sandbox, owner)).get_json()["items"]
    other = token_of(client, sandbox, neighbour)

    assert client.get(URL, headers=other).get_json()["items"] == []
    response = client.post(f"{URL}/{item['id']}/read", headers=other)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "NOT_FOUND"
    assert world.notices(owner.person_id)[0].read_at is None


def test_a_user_not_yet_verified_has_an_empty_inbox(client, sandbox):
    headers = bearer(sign_in_wechat(client, sandbox)["access_token"])

    response = client.get(URL, headers=headers)

    assert response.get_json() == {"items": [], "next_cursor": None}
    assert client.post(f"{URL}/1/read", headers=headers).status_code == 404


def test_the_inbox_needs_a_user_token(client, demo):
    assert client.get(URL).status_code == 401
    assert client.get(URL, headers=bearer(demo.tokens["window1"])).status_code == 403


def test_in_the_demo_a_settlement_and_a_refund_reach_the_owner_on_wechat_and_in_the_inbox_R15(
        app, client, sandbox, demo, notifier):
    from tests.money_helpers import CHILD, NAMES, OWNER, drug, fresh, issue, make_binding, person_id, refund, settle

    fresh(app)
    make_binding(app, OWNER, CHILD, "child")
    openid = random_openid()
    token = signed_in_person(client, sandbox, NAMES[OWNER], OWNER, openid)
    # The popup's "accept": WeChat records it, the mini-program reports it.
    sandbox.grant_wechat_consent(openid, TEMPLATE_DEDUCTION, count=2)
    client.post("/api/v1/subscriptions", headers=bearer(token),
                json={"channel": "wechat", "mode": "one_time", "results": {TEMPLATE_DEDUCTION: "accept"}})
    client.post("/api/v1/subscriptions", headers=bearer(token),
                json={"channel": "wechat", "mode": "one_time", "results": {TEMPLATE_DEDUCTION: "accept"}})

    settled = settle(client, issue(client, token, person_id(app, CHILD)), [drug(10_000)])
    assert settled.status_code == 201, settled.get_json()
    settlement_no = settled.get_json()["settlement_no"]
    notifier.drain()
    assert refund(client, settlement_no, 2_500).status_code == 201
    notifier.drain()

    deduction, credit = sandbox.sent_messages(to=openid)
    assert (deduction.data["phrase1"], deduction.data["amount5"]) == ("共济支付", "¥100.00")
    assert (deduction.data["name2"], deduction.data["phrase3"]) == ("**明", "子女")
    assert deduction.data["character_string8"] == settlement_no
    assert (credit.data["phrase1"], credit.data["amount5"]) == ("退款入账", "¥25.00")
    items = client.get(URL, headers=bearer(token)).get_json()["items"]
    assert [(i["kind"], i["amount_fen"], i["settlement_no"]) for i in items] == [
        ("refund", 2_500, settlement_no), ("deduction", 10_000, settlement_no)]
    assert all(i["deliveries"] == [{"channel": "wechat", "state": "sent", "error": None}] for i in items)


# --- staff ------------------------------------------------------------------------------------------


def test_staff_see_attempts_upstream_codes_and_final_states_R15(client, sandbox, world, notifier, demo):
    owner, child = world.person("张伟"), world.person("张小明")
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    sandbox.inject_fault("wechat.subscribe_send", errcode=47003)
    settled = world.settle(child, [(owner, "copay", 100)])
    notifier.drain()

    response = client.get(STAFF_URL, query_string={"state": "failed"}, headers=bearer(demo.tokens["auditor1"]))

    assert response.status_code == 200
    (item,) = response.get_json()["items"]
    assert (item["settlement_no"], item["channel"], item["state"]) == (settled.settlement_no, "wechat", "failed")
    assert (item["attempts"], item["last_error_code"]) == (1, "47003")
    assert item["template_id"] == TEMPLATE_DEDUCTION
    sent = client.get(STAFF_URL, query_string={"state": "sent"}, headers=bearer(demo.tokens["auditor1"]))
    assert sent.get_json()["items"] == []


def test_staff_resend_a_failed_push_and_it_is_audit_logged_R15(client, sandbox, world, notifier, demo):
    owner, child = world.person("张伟"), world.person("张小明")
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    sandbox.inject_fault("wechat.subscribe_send", errcode=47003)
    (delivery_id,) = world.settle(child, [(owner, "copay", 100)]).delivery_ids
    notifier.drain()

    response = client.post(f"{STAFF_URL}/{delivery_id}/retry", json={"reason": "user 532621198001011234 called"},
                           headers=bearer(demo.tokens["window1"]))
    notifier.drain()

    assert response.status_code == 200 and response.get_json()["state"] == "pending"
    assert world.delivery(delivery_id).state == "sent"
    assert len(sandbox.sent_messages(to=owner.openid)) == 1
    with app_session() as session, session.begin():
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "notice.resend")).one()
        assert (event.target_kind, event.target_id) == ("delivery", delivery_id)
        assert "532621198001011234" not in str(event.details)


def test_a_sent_push_cannot_be_resent_and_auditors_cannot_resend(client, sandbox, world, notifier, demo):
    owner, child = world.person("张伟"), world.person("张小明")
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    (delivery_id,) = world.settle(child, [(owner, "copay", 100)]).delivery_ids
    notifier.drain()

    sent = client.post(f"{STAFF_URL}/{delivery_id}/retry", json={"reason": "again"},
                       headers=bearer(demo.tokens["window1"]))
    auditor = client.post(f"{STAFF_URL}/{delivery_id}/retry", json={"reason": "again"},
                          headers=bearer(demo.tokens["auditor1"]))

    assert sent.status_code == 409 and sent.get_json()["error"]["code"] == "INVALID_STATE"
    assert auditor.status_code == 403
    assert len(sandbox.sent_messages(to=owner.openid)) == 1


def test_the_push_log_is_for_staff_only(client, sandbox):
    headers = bearer(sign_in_wechat(client, sandbox)["access_token"])

    assert client.get(STAFF_URL, headers=headers).status_code == 403
    assert client.get(STAFF_URL).status_code == 401
