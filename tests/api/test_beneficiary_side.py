"""The beneficiary's side of a binding (R21): inbox notices, and declining a consent request."""

from __future__ import annotations

import pytest

from app.demo import CHILD, NEIGHBOUR, OWNER, SPOUSE
from tests.binding_helpers import bind, bind_at_window, created, error_code, policy_dir, records, sign_in
from tests.helpers import bearer


def binding_notices(client, token):
    items = client.get("/api/v1/notifications", headers=bearer(token)).get_json()["items"]
    return [(n["event"], n["binding_id"]) for n in items if n["kind"] == "binding"][::-1]


def test_the_beneficiary_hears_of_creation_suspension_resumption_and_end(client, sandbox, demo):
    owner = sign_in(client, sandbox, OWNER)
    binding = created(bind(client, owner, CHILD, "child"))
    child = sign_in(client, sandbox, CHILD)
    admin = bearer(demo.tokens["admin1"])
    suspension = client.post("/api/v1/staff/suspensions", json={"binding_id": binding["id"], "reason": "核查"},
                             headers=admin).get_json()
    client.post(f"/api/v1/staff/suspensions/{suspension['id']}/lift", json={"reason": "核查完毕"}, headers=admin)
    client.post(f"/api/v1/bindings/{binding['id']}/unbind", json={"reason": "不再需要"}, headers=bearer(owner))

    bid = binding["id"]
    assert binding_notices(client, child) == [("created", bid), ("suspended", bid), ("resumed", bid), ("ended", bid)]
    (created_notice,) = [n for n in client.get("/api/v1/notifications", headers=bearer(child)).get_json()["items"]
                         if n["event"] == "created"]
    assert "父母" in created_notice["message"] and "已生效" in created_notice["message"]
    assert binding_notices(client, owner) == []  # the owner made these changes


def test_a_binding_waiting_for_review_then_approved_tells_the_beneficiary_both(client, sandbox, demo):
    from tests.binding_helpers import upload

    owner = sign_in(client, sandbox, OWNER)
    document = created(upload(client, owner))["id"]
    # No household row confirms 张伟 and 王芳: the binding waits for review.
    binding = created(bind(client, owner, NEIGHBOUR, "spouse", documents=[document]))
    assert binding["status"] == "pending_review"
    client.post(f"/api/v1/staff/bindings/{binding['id']}/approve", json={}, headers=bearer(demo.tokens["window1"]))
    neighbour = sign_in(client, sandbox, NEIGHBOUR)
    assert [e for e, _ in binding_notices(client, neighbour)] == ["created", "active"]


def test_a_window_rejection_ends_it_for_the_beneficiary(client, sandbox, demo):
    window = bearer(demo.tokens["window1"])
    binding = created(bind_at_window(client, demo.tokens["window1"], OWNER, CHILD, "child"))
    client.post(f"/api/v1/staff/bindings/{binding['id']}/unbind", json={"reason": "申请人要求"}, headers=window)
    child = sign_in(client, sandbox, CHILD)
    assert [e for e, _ in binding_notices(client, child)] == ["created", "ended"]


@pytest.fixture
def consent_app(make_app, demo, tmp_path):
    return make_app(POLICY_DIR=policy_dir(tmp_path, "532800", beneficiary_consent="required"), REGION_CODE="532800")


def test_the_beneficiary_declines_a_consent_request_and_the_owner_hears(consent_app, sandbox):
    client = consent_app.test_client()
    owner = sign_in(client, sandbox, OWNER)
    binding = created(bind(client, owner, SPOUSE, "spouse"))
    assert binding["status"] == "pending_consent"
    spouse = sign_in(client, sandbox, SPOUSE)
    url = f"/api/v1/bindings/{binding['id']}/decline"

    assert client.post(url, json={"reason": "x"}, headers=bearer(owner)).status_code == 403
    declined = client.post(url, json={"reason": "我有自己的账户"}, headers=bearer(spouse))
    assert declined.status_code == 200 and declined.get_json()["status"] == "rejected"
    again = client.post(url, json={}, headers=bearer(spouse))
    assert again.status_code == 409 and error_code(again) == "INVALID_STATE"
    (record,) = [r for r in records(client, owner) if r["event"] == "declined"]
    assert record["actor"]["kind"] == "beneficiary" and record["reason"] == "我有自己的账户"
    assert binding_notices(client, owner) == [("declined", binding["id"])]
    # Declined, it can be asked again (the pair is no longer live).
    assert created(bind(client, owner, SPOUSE, "spouse"))["status"] == "pending_consent"


def test_an_active_binding_cannot_be_declined_and_strangers_get_404(client, sandbox, demo):
    owner = sign_in(client, sandbox, OWNER)
    binding = created(bind(client, owner, CHILD, "child"))
    child = sign_in(client, sandbox, CHILD)
    url = f"/api/v1/bindings/{binding['id']}/decline"
    assert error_code(client.post(url, json={}, headers=bearer(child))) == "INVALID_STATE"
    stranger = sign_in(client, sandbox, SPOUSE)
    assert client.post(url, json={}, headers=bearer(stranger)).status_code == 404


def test_where_a_receipt_template_is_configured_the_beneficiary_also_gets_a_push(make_app, sandbox, demo):
    from tests.conftest import TEMPLATE_RECEIPT
    from tests.helpers import random_openid, signed_in_person

    app = make_app(WECHAT_TEMPLATE_RECEIPT=TEMPLATE_RECEIPT)
    client = app.test_client()
    child_openid = random_openid()
    child = signed_in_person(client, sandbox, "张小明", CHILD, openid=child_openid)
    sandbox.grant_wechat_consent(child_openid, TEMPLATE_RECEIPT)
    assert client.post("/api/v1/subscriptions", headers=bearer(child), json={
        "channel": "wechat", "mode": "one_time", "results": {TEMPLATE_RECEIPT: "accept"}}).status_code in (200, 201)
    owner = sign_in(client, sandbox, OWNER)
    binding = created(bind(client, owner, CHILD, "child"))
    app.extensions["domain"].notifier.drain()

    (message,) = sandbox.sent_messages(platform="wechat", to=child_openid, template_id=TEMPLATE_RECEIPT)
    assert message.data["phrase1"] == "共济生效" and message.data["name2"] == "本人"
    assert message.data["amount4"] == "¥0.00" and message.data["character_string6"] == f"B{binding['id']}"
    (notice,) = [n for n in client.get("/api/v1/notifications", headers=bearer(child)).get_json()["items"]
                 if n["kind"] == "binding"]
    assert notice["deliveries"] == [{"channel": "wechat", "state": "sent", "error": None}]


def test_without_a_receipt_template_binding_notices_stay_in_the_inbox(client, sandbox, demo):
    owner = sign_in(client, sandbox, OWNER)
    child = sign_in(client, sandbox, CHILD)
    created(bind(client, owner, CHILD, "child"))
    (notice,) = [n for n in client.get("/api/v1/notifications", headers=bearer(child)).get_json()["items"]
                 if n["kind"] == "binding"]
    assert notice["deliveries"] == []
