"""Authorization records (共济授权记录, R16) for every path, keyset pagination, and the staff audit log."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from app.demo import CHILD, NEIGHBOUR, OWNER, PARENT, SPOUSE
from app.extensions import app_session
from models import AuditEvent
from tests.binding_helpers import PEOPLE, bind, bind_at_window, created, records, sign_in, upload
from tests.helpers import bearer

ISO_SHANGHAI = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+08:00")


@pytest.fixture
def owner(client, sandbox, demo) -> str:
    return sign_in(client, sandbox, OWNER)


def staff(demo, who):
    return bearer(demo.tokens[who])


def history(client, token, binding_id):
    return [(r["event"], r["actor"]["kind"], r["channel"], r["reason"])
            for r in records(client, token, binding_id=binding_id)][::-1]


def test_r16_a_record_has_the_spec_shape(client, owner):
    binding = created(bind(client, owner, CHILD, "child"))
    record = records(client, owner)[0]
    assert set(record) >= {"id", "binding_id", "event", "actor", "channel", "reason", "at"}
    assert record["binding_id"] == binding["id"] and record["role"] == "owner"
    assert record["actor"] == {"kind": "owner"} and record["channel"] == "wechat"
    assert ISO_SHANGHAI.fullmatch(record["at"])


def test_r16_every_path_of_an_online_binding_is_recorded(client, demo, owner):
    binding = created(bind(client, owner, CHILD, "child"))
    client.patch(f"/api/v1/bindings/{binding['id']}", json={"yearly_limit_fen": 10000}, headers=bearer(owner))
    suspension = client.post("/api/v1/staff/suspensions", json={"binding_id": binding["id"], "reason": "套现"},
                             headers=staff(demo, "admin1")).get_json()
    lifted = client.post(f"/api/v1/staff/suspensions/{suspension['id']}/lift", headers=staff(demo, "admin1"))
    assert lifted.status_code == 200  # no body needed
    client.post(f"/api/v1/bindings/{binding['id']}/unbind", json={"reason": "孩子已工作"}, headers=bearer(owner))
    assert history(client, owner, binding["id"]) == [
        ("created", "owner", "wechat", None),
        ("activated", "owner", "wechat", None),
        ("limit_changed", "owner", "wechat", None),
        ("suspended", "staff", "window", "套现"),
        ("lifted", "staff", "window", None),
        ("unbound", "owner", "wechat", "孩子已工作"),
    ]


def test_r16_review_paths_are_recorded(client, demo, owner):
    document = created(upload(client, owner))
    approved = created(bind(client, owner, NEIGHBOUR, "parent", [document["id"]]))
    client.post(f"/api/v1/staff/bindings/{approved['id']}/approve", json={"reason": "材料齐全"},
                headers=staff(demo, "window1"))
    assert history(client, owner, approved["id"]) == [
        ("created", "owner", "wechat", None), ("pending_review", "owner", "wechat", None),
        ("approved", "staff", "window", "材料齐全"), ("activated", "staff", "window", None),
    ]
    client.post(f"/api/v1/bindings/{approved['id']}/unbind", json={}, headers=bearer(owner))
    rejected = created(bind(client, owner, NEIGHBOUR, "parent", [document["id"]]))
    client.post(f"/api/v1/staff/bindings/{rejected['id']}/reject", json={"reason": "关系不符"},
                headers=staff(demo, "window1"))
    assert history(client, owner, rejected["id"])[-1] == ("rejected", "staff", "window", "关系不符")


def test_r16_window_bindings_and_owner_and_beneficiary_suspensions_are_recorded(client, sandbox, demo, owner):
    window = created(bind_at_window(client, demo.tokens["window1"], OWNER, PARENT, "parent"))
    client.post("/api/v1/staff/suspensions", json={"owner_id_number": OWNER, "reason": "套现"},
                headers=staff(demo, "admin1"))
    client.post("/api/v1/staff/suspensions", json={"beneficiary_id_number": PARENT, "reason": "冒用"},
                headers=staff(demo, "admin1"))
    client.post(f"/api/v1/staff/bindings/{window['id']}/unbind", json={"reason": "本人申请"},
                headers=staff(demo, "window1"))
    # The beneficiary's suspension reason is theirs: the owner reads the standard text (R11, R16).
    assert history(client, owner, window["id"]) == [
        ("created", "staff", "window", None), ("activated", "staff", "window", None),
        ("suspended", "staff", "window", "套现"),
        ("suspended", "staff", "window", "该家庭成员的共济支付已暂停，暂停期间您的个人账户不再为其支付。"),
        ("unbound", "staff", "window", "本人申请"),
    ]


def test_r16_a_beneficiary_sees_the_records_of_bindings_that_pay_for_them_and_a_stranger_sees_none(
        client, sandbox, owner):
    binding = created(bind(client, owner, SPOUSE, "spouse"))
    spouse = sign_in(client, sandbox, SPOUSE)
    seen = records(client, spouse)
    assert {r["binding_id"] for r in seen} == {binding["id"]} and {r["role"] for r in seen} == {"beneficiary"}
    neighbour = sign_in(client, sandbox, NEIGHBOUR)
    assert records(client, neighbour) == []
    assert records(client, neighbour, binding_id=binding["id"]) == []


def test_r16_records_are_keyset_paginated_newest_first_without_gaps_or_repeats(client, owner):
    for who, rel in ((CHILD, "child"), (SPOUSE, "spouse"), (PARENT, "parent")):
        created(bind(client, owner, who, rel))
    everything = records(client, owner, limit=100)
    assert len(everything) == 6
    assert [r["id"] for r in everything] == sorted((r["id"] for r in everything), reverse=True)
    seen, cursor = [], None
    while True:
        query = {"limit": 4} | ({"cursor": cursor} if cursor else {})
        body = client.get("/api/v1/records/authorizations", query_string=query, headers=bearer(owner)).get_json()
        seen += [r["id"] for r in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [r["id"] for r in everything]


@pytest.mark.parametrize("query", [{"cursor": "not-a-cursor"}, {"limit": 0}, {"limit": 101}])
def test_a_malformed_cursor_or_limit_is_a_400(client, owner, query):
    response = client.get("/api/v1/records/authorizations", query_string=query, headers=bearer(owner))
    assert response.status_code == 400


# --- the staff audit log --------------------------------------------------------------------------------


def test_every_staff_action_is_in_the_audit_log_which_auditors_and_admins_read(client, demo, owner):
    document = created(upload(client, owner))
    pending = created(bind(client, owner, NEIGHBOUR, "parent", [document["id"]]))
    client.post(f"/api/v1/staff/bindings/{pending['id']}/approve", json={}, headers=staff(demo, "window1"))
    window = created(bind_at_window(client, demo.tokens["admin1"], OWNER, CHILD, "child"))
    client.post("/api/v1/staff/suspensions", json={"binding_id": window["id"], "reason": "x"},
                headers=staff(demo, "admin1"))
    client.get(f"/api/v1/documents/{document['id']}", headers=staff(demo, "auditor1"))
    window_read = client.get("/api/v1/staff/audit-log", headers=staff(demo, "window1"))
    assert window_read.status_code == 403  # SPEC: the audit log is the auditors' and admins'
    for who in ("admin1", "auditor1"):
        log = client.get("/api/v1/staff/audit-log?actor_kind=staff", headers=staff(demo, who))
        assert log.status_code == 200
        actions = [e["action"] for e in log.get_json()["items"]]
        assert actions == ["document.read", "suspension.create", "binding.create", "binding.approve"]
    entry = client.get("/api/v1/staff/audit-log?action=binding.approve", headers=staff(demo, "auditor1")).get_json()
    assert entry["items"][0]["target"] == {"kind": "binding", "id": pending["id"]}
    assert ISO_SHANGHAI.fullmatch(entry["items"][0]["at"])


def test_the_audit_log_is_keyset_paginated(client, demo, owner):
    for who, rel in ((CHILD, "child"), (SPOUSE, "spouse"), (PARENT, "parent")):
        created(bind(client, owner, who, rel))
    first = client.get("/api/v1/staff/audit-log?limit=2", headers=staff(demo, "auditor1")).get_json()
    second = client.get(f"/api/v1/staff/audit-log?limit=2&cursor={first['next_cursor']}",
                        headers=staff(demo, "auditor1")).get_json()
    ids = [e["id"] for e in first["items"] + second["items"]]
    assert len(ids) == 4 and ids == sorted(ids, reverse=True)


def test_the_audit_log_is_for_staff_only(client, owner):
    assert client.get("/api/v1/staff/audit-log", headers=bearer(owner)).status_code == 403
    assert client.get("/api/v1/staff/audit-log").status_code == 401


def test_r17_no_audit_event_holds_a_raw_id_number_card_number_or_name(client, sandbox, demo, owner):
    document = created(upload(client, owner))
    pending = created(bind(client, owner, NEIGHBOUR, "parent", [document["id"]]))
    client.post(f"/api/v1/staff/bindings/{pending['id']}/reject", json={"reason": f"{NEIGHBOUR} 材料不符"},
                headers=staff(demo, "window1"))
    created(bind_at_window(client, demo.tokens["window1"], OWNER, CHILD, "child"))
    client.post("/api/v1/staff/suspensions", json={"beneficiary_id_number": CHILD, "reason": "x"},
                headers=staff(demo, "admin1"))
    client.post("/api/v1/staff/bindings/search", json={"owner_id_number": OWNER}, headers=staff(demo, "auditor1"))
    with app_session() as session, session.begin():
        text = str([(e.action, e.details) for e in session.scalars(select(AuditEvent))])
    assert "binding.lookup" in text and "suspension.create" in text
    for number, (name, card) in PEOPLE.items():
        assert number not in text and card not in text and name not in text
