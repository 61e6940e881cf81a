"""The service-window side: window bindings, review, unbinding, look-ups and staff roles (R3–R5, R16)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from app.demo import CHILD, NEIGHBOUR, OWNER, SPOUSE
from app.extensions import app_session
from models import AuditEvent, Person
from tests.binding_helpers import (
    bind,
    bind_at_window,
    created,
    error_code,
    policy_dir,
    records,
    sign_in,
    upload,
)
from tests.helpers import bearer


def masked(id_number: str) -> str:
    return id_number[:3] + "*" * 11 + id_number[-4:]


@pytest.fixture
def owner(client, sandbox, demo) -> str:
    return sign_in(client, sandbox, OWNER)


@pytest.fixture
def pending(client, owner) -> dict:
    """An online binding of the neighbour as the owner's parent: no household row, so it waits for review."""
    document = created(upload(client, owner))
    return created(bind(client, owner, NEIGHBOUR, "parent", [document["id"]]))


def staff_post(client, demo, who, path, body=None):
    return client.post(f"/api/v1/staff/bindings{path}", json=body if body is not None else {},
                       headers=bearer(demo.tokens[who]))


def audit_actions(**where) -> list[tuple[str, str, int | None]]:
    with app_session() as session, session.begin():
        query = select(AuditEvent).order_by(AuditEvent.id)
        for name, value in where.items():
            query = query.where(getattr(AuditEvent, name) == value)
        return [(e.action, e.actor_kind, e.target_id) for e in session.scalars(query)]


# --- window bindings -----------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["window1", "admin1"])
def test_r5_window_staff_create_an_active_binding_after_checking_the_paper_proofs(client, demo, owner, who):
    binding = created(bind_at_window(client, demo.tokens[who], OWNER, NEIGHBOUR, "parent"))
    assert binding["status"] == "active" and binding["channel"] == "window"
    assert binding["effective_at"] is not None and binding["relationship_confirmed"] is True
    assert binding["owner"]["id_number"] == masked(OWNER) and "role" not in binding
    # the owner sees it in the mini-program, with its history
    listed = client.get("/api/v1/bindings", headers=bearer(owner)).get_json()["items"]
    assert [(b["id"], b["channel"], b["role"]) for b in listed] == [(binding["id"], "window", "owner")]
    events = [(r["event"], r["actor"]["kind"], r["channel"]) for r in records(client, owner)][::-1]
    assert events == [("created", "staff", "window"), ("activated", "staff", "window")]
    assert ("binding.create", "staff", binding["id"]) in audit_actions(action="binding.create")


def test_r1_r2_r3_the_window_checks_the_same_rules(client, demo):
    window = demo.tokens["window1"]
    for owner_id, member_id, relationship, code in (
        (CHILD, OWNER, "parent", "OWNER_NOT_ELIGIBLE"),
        (OWNER, OWNER, "child", "SELF_BINDING"),
        (OWNER, CHILD, "sibling", "RELATIONSHIP_NOT_ALLOWED"),
    ):
        response = bind_at_window(client, window, owner_id, member_id, relationship)
        assert response.status_code == 422 and error_code(response) == code
    created(bind_at_window(client, window, OWNER, CHILD, "child"))
    again = bind_at_window(client, window, OWNER, CHILD, "child")
    assert again.status_code == 422 and error_code(again) == "ALREADY_BOUND"


def test_a_window_binding_for_an_owner_not_in_the_registry_is_404(client, demo):
    from datetime import date

    from app.security.id_number import make_id_number

    response = bind_at_window(client, demo.tokens["window1"], make_id_number("532621", date(1970, 1, 1), 999),
                              CHILD, "child")
    assert response.status_code == 404


def test_the_window_binding_needs_the_owner_to_agree_to_the_current_pledge(client, demo):
    response = bind_at_window(client, demo.tokens["window1"], OWNER, CHILD, "child",
                              pledge={"version": "v1", "sha256": "0" * 64, "agreed": True})
    assert response.status_code == 422 and error_code(response) == "PLEDGE_INVALID"


@pytest.mark.parametrize("who, status", [("auditor1", 403), (None, 401)])
def test_auditors_and_anonymous_callers_cannot_bind_at_the_window(client, demo, who, status):
    token = demo.tokens[who] if who else "st_not-a-token"
    assert bind_at_window(client, token, OWNER, CHILD, "child").status_code == status


def test_a_user_token_on_a_staff_endpoint_is_403(client, owner, pending):
    assert bind_at_window(client, owner, OWNER, CHILD, "child").status_code == 403
    assert client.get("/api/v1/staff/bindings", headers=bearer(owner)).status_code == 403
    assert client.post(f"/api/v1/staff/bindings/{pending['id']}/approve", json={},
                       headers=bearer(owner)).status_code == 403


# --- review ---------------------------------------------------------------------------------------------


def test_r5_staff_approve_a_pending_binding_which_becomes_active_then(client, demo, owner, pending):
    assert pending["effective_at"] is None
    approved = staff_post(client, demo, "window1", f"/{pending['id']}/approve", {"reason": "户口簿已核"})
    assert approved.status_code == 200
    body = approved.get_json()
    assert body["status"] == "active" and body["effective_at"] is not None and body["relationship_confirmed"]
    events = [(r["event"], r["actor"], r["reason"]) for r in records(client, owner, binding_id=pending["id"])]
    staff_id = events[0][1]["id"]
    assert events[:2] == [("activated", {"kind": "staff", "id": staff_id}, None),
                          ("approved", {"kind": "staff", "id": staff_id}, "户口簿已核")]
    again = staff_post(client, demo, "admin1", f"/{pending['id']}/approve")
    assert again.status_code == 409 and error_code(again) == "INVALID_STATE"
    assert ("binding.approve", "staff", pending["id"]) in audit_actions(action="binding.approve")


def test_r5_staff_reject_a_pending_binding_with_a_reason_the_owner_reads(client, demo, owner, pending):
    assert staff_post(client, demo, "window1", f"/{pending['id']}/reject").status_code == 400
    rejected = staff_post(client, demo, "window1", f"/{pending['id']}/reject", {"reason": "证明材料不清晰"})
    assert rejected.status_code == 200 and rejected.get_json()["status"] == "rejected"
    latest = records(client, owner)[0]
    assert (latest["event"], latest["reason"]) == ("rejected", "证明材料不清晰")
    approve = staff_post(client, demo, "window1", f"/{pending['id']}/approve")
    assert approve.status_code == 409 and error_code(approve) == "INVALID_STATE"
    # a rejected request leaves room for a new one, with the same proof
    document = created(upload(client, owner), 200)
    assert created(bind(client, owner, NEIGHBOUR, "parent", [document["id"]]))["status"] == "pending_review"


def test_r5_an_active_binding_cannot_be_approved_or_rejected(client, demo, owner):
    binding = created(bind(client, owner, CHILD, "child"))
    for action in ("approve", "reject"):
        response = staff_post(client, demo, "window1", f"/{binding['id']}/{action}", {"reason": "x"})
        assert response.status_code == 409


def test_r1_approval_checks_the_owner_again_because_the_registry_may_have_changed(client, demo, pending):
    with app_session() as session, session.begin():
        session.execute(update(Person).where(Person.id == pending["owner"]["person_id"]).values(status="inactive"))
    response = staff_post(client, demo, "window1", f"/{pending['id']}/approve")
    assert response.status_code == 422 and error_code(response) == "OWNER_NOT_ELIGIBLE"


def test_r5_where_consent_is_required_an_approved_binding_waits_for_the_adult_beneficiary(
        make_app, sandbox, demo, tmp_path):
    app = make_app(POLICY_DIR=policy_dir(tmp_path, "532800", beneficiary_consent="required"), REGION_CODE="532800")
    client = app.test_client()
    owner = sign_in(client, sandbox, OWNER)
    document = created(upload(client, owner))
    binding = created(bind(client, owner, NEIGHBOUR, "sibling", [document["id"]]))
    approved = staff_post(client, demo, "window1", f"/{binding['id']}/approve").get_json()
    assert approved["status"] == "pending_consent" and approved["effective_at"] is None
    neighbour = sign_in(client, sandbox, NEIGHBOUR)
    confirmed = client.post(f"/api/v1/bindings/{binding['id']}/confirm", headers=bearer(neighbour)).get_json()
    assert confirmed["status"] == "active"


@pytest.mark.parametrize("who", ["auditor1"])
def test_auditors_cannot_approve_reject_or_unbind(client, demo, pending, who):
    for action in ("approve", "reject", "unbind"):
        response = staff_post(client, demo, who, f"/{pending['id']}/{action}", {"reason": "x"})
        assert response.status_code == 403 and error_code(response) == "FORBIDDEN"


# --- unbinding at the window ----------------------------------------------------------------------------


def test_r5_staff_unbind_at_the_window_with_a_reason(client, demo, owner):
    binding = created(bind(client, owner, CHILD, "child"))
    assert staff_post(client, demo, "window1", f"/{binding['id']}/unbind").status_code == 400
    response = staff_post(client, demo, "window1", f"/{binding['id']}/unbind", {"reason": "本人持身份证到窗口申请解绑"})
    assert response.status_code == 200
    assert response.get_json()["status"] == "unbound" and response.get_json()["ended_at"] is not None
    latest = records(client, owner)[0]
    assert (latest["event"], latest["actor"]["kind"], latest["channel"]) == ("unbound", "staff", "window")
    again = staff_post(client, demo, "admin1", f"/{binding['id']}/unbind", {"reason": "x"})
    assert again.status_code == 409


def test_r17_an_id_or_mobile_number_typed_full_width_in_a_reason_is_masked_like_any_other(client, demo, owner):
    """Chinese input methods type full-width digits (the service accepts an ID number typed so, R18):
    a reason holding one is what the owner reads in their records and inbox and staff in the audit
    log, so it must be masked as the ASCII form is."""
    full_width = str.maketrans("0123456789X", "０１２３４５６７８９Ｘ")
    binding = created(bind(client, owner, CHILD, "child"))
    reason = f"本人持身份证{OWNER.translate(full_width)}到窗口申请解绑，电话{'13800001234'.translate(full_width)}"
    response = staff_post(client, demo, "window1", f"/{binding['id']}/unbind", {"reason": reason})
    assert response.status_code == 200
    shown = [records(client, owner)[0]["reason"]]
    notices = client.get("/api/v1/notifications", headers=bearer(owner)).get_json()["items"]
    with app_session() as session, session.begin():
        shown += [str(e.details) for e in session.scalars(select(AuditEvent).where(
            AuditEvent.action == "binding.unbind", AuditEvent.target_id == binding["id"]))]
    shown += [str(n) for n in notices]
    assert masked(OWNER) in shown[0] and "138****1234" in shown[0]
    for text in shown:
        for secret in (OWNER, "13800001234"):
            assert secret not in text and secret.translate(full_width) not in text, text


def test_a_staff_action_on_an_unknown_binding_is_404(client, demo):
    for action in ("approve", "reject", "unbind"):
        assert staff_post(client, demo, "window1", f"/999999/{action}", {"reason": "x"}).status_code == 404


# --- look-ups ----------------------------------------------------------------------------------------------


def test_the_review_queue_lists_pending_bindings_for_every_staff_role(client, demo, owner, pending):
    created(bind(client, owner, CHILD, "child"))
    for who in ("window1", "admin1", "auditor1"):
        response = client.get("/api/v1/staff/bindings?status=pending_review", headers=bearer(demo.tokens[who]))
        assert [b["id"] for b in response.get_json()["items"]] == [pending["id"]]


def test_r17_staff_look_bindings_up_by_id_number_in_a_post_body_and_the_look_up_is_audited_masked(
        client, demo, owner, pending):
    child = created(bind(client, owner, CHILD, "child"))
    auditor = bearer(demo.tokens["auditor1"])
    search = "/api/v1/staff/bindings/search"
    by_owner = client.post(search, json={"owner_id_number": OWNER}, headers=auditor)
    assert {b["id"] for b in by_owner.get_json()["items"]} == {pending["id"], child["id"]}
    by_member = client.post(search, json={"beneficiary_id_number": CHILD}, headers=auditor)
    assert [b["id"] for b in by_member.get_json()["items"]] == [child["id"]]
    nobody = client.post(search, json={"owner_id_number": SPOUSE}, headers=auditor)
    assert nobody.get_json()["items"] == []
    pending_of_owner = client.post(search, json={"owner_id_number": OWNER, "status": "pending_review"},
                                   headers=auditor)
    assert [b["id"] for b in pending_of_owner.get_json()["items"]] == [pending["id"]]
    with app_session() as session, session.begin():
        lookups = session.scalars(select(AuditEvent).where(AuditEvent.action == "binding.lookup")
                                  .order_by(AuditEvent.id)).all()
    assert [e.details for e in lookups] == [{"owner_id_number": masked(OWNER)},
                                            {"beneficiary_id_number": masked(CHILD)},
                                            {"owner_id_number": masked(SPOUSE)},
                                            {"owner_id_number": masked(OWNER)}]


def test_staff_read_any_binding_and_its_authorization_records(client, demo, owner, pending):
    auditor = bearer(demo.tokens["auditor1"])
    detail = client.get(f"/api/v1/staff/bindings/{pending['id']}", headers=auditor).get_json()
    assert detail["status"] == "pending_review" and len(detail["documents"]) == 1
    history = client.get(f"/api/v1/staff/bindings/{pending['id']}/authorizations", headers=auditor).get_json()
    assert [(r["event"], r["actor"]["kind"]) for r in history["items"]] == [("pending_review", "owner"),
                                                                            ("created", "owner")]
    assert isinstance(history["items"][0]["actor"]["id"], int)
    assert client.get("/api/v1/staff/bindings/999999", headers=auditor).status_code == 404
    assert client.get("/api/v1/staff/bindings/999999/authorizations", headers=auditor).status_code == 404


def test_r19_window_bindings_are_rate_limited_per_staff_member(make_app, demo):
    """R19: binding creation is limited at the window too (a leaked staff token cannot bind in bulk)."""
    from tests.binding_helpers import bind_at_window

    client = make_app(RATE_LIMIT_PER_USER="1/60").test_client()
    token = demo.tokens["window1"]
    assert bind_at_window(client, token, OWNER, CHILD, "child").status_code == 201
    limited = bind_at_window(client, token, OWNER, SPOUSE, "spouse")
    assert limited.status_code == 429
    assert limited.get_json()["error"]["code"] == "RATE_LIMITED"
