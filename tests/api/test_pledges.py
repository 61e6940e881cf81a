"""The e-signed pledge (R4): versioned texts, the signed attestation, offline verification, tampering."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy import select, update

from app.config import ConfigError
from app.demo import CHILD, NEIGHBOUR, OWNER, SPOUSE
from app.extensions import app_session
from models import AuditEvent, Binding, Person, Pledge, StaffUser
from tests.binding_helpers import (
    bind,
    bind_at_window,
    created,
    error_code,
    pledge,
    pledge_dir,
    sign_in,
    upload,
)
from tests.helpers import bearer
from tests.money_helpers import person_id

PLEDGE_DIR = Path(__file__).resolve().parents[2] / "pledges"

# Every published pledge text, pinned. A published text is never edited: write v<N+1> and pin it here.
PUBLISHED = {
    "v1.zh.md": "deb848adcbfdbedce5e75dfab3aaa90eacecbab4d2e9d18c7c6e3ef3ff5e3696",
}


def test_r4_published_pledge_texts_are_never_edited_in_place():
    texts = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in PLEDGE_DIR.glob("v*.md")}
    assert texts == PUBLISHED


def test_r4_the_current_pledge_is_served_with_its_version_and_sha256(client):
    current = client.get("/api/v1/pledges/current").get_json()
    assert current["version"] == "v1" and current["language"] == "zh"
    assert current["sha256"] == PUBLISHED["v1.zh.md"]
    assert hashlib.sha256(current["text"].encode("utf-8")).hexdigest() == current["sha256"]


@pytest.mark.parametrize("obligation", ["先备案、后消费", "年度累计支付限额", "套现", "倒卖", "暂停", "法律责任",
                                        "解除绑定", "SHA-256"])
def test_r4_the_pledge_text_states_the_obligations_of_the_seed(client, obligation):
    assert obligation in client.get("/api/v1/pledges/current").get_json()["text"]


def test_r4_the_newest_version_is_current_and_an_older_one_is_refused(make_app, sandbox, demo, tmp_path):
    app = make_app(PLEDGE_DIR=pledge_dir(tmp_path, {"v2.zh.md": "# 承诺书（第 2 版）\n\n本人承诺……\n"}))
    client = app.test_client()
    assert client.get("/api/v1/pledges/current").get_json()["version"] == "v2"
    owner = sign_in(client, sandbox, OWNER)
    old = {"version": "v1", "sha256": PUBLISHED["v1.zh.md"], "agreed": True}
    response = bind(client, owner, CHILD, "child", pledge=old)
    assert response.status_code == 422 and error_code(response) == "PLEDGE_INVALID"
    assert response.get_json()["error"]["details"] == {"reason": "not_current", "current_version": "v2"}
    assert created(bind(client, owner, CHILD, "child"))["status"] == "active"


def test_a_deployment_without_pledge_texts_does_not_start(make_config, tmp_path):
    from app import create_app

    with pytest.raises(ConfigError, match="pledge texts"):
        create_app(make_config(PLEDGE_DIR=str(tmp_path)))


def _pledge_of(client, token, binding_id):
    response = client.get(f"/api/v1/bindings/{binding_id}/pledge", headers=bearer(token))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_r4_a_binding_carries_a_signed_attestation_that_verifies(client, sandbox, demo):
    owner = sign_in(client, sandbox, OWNER)
    document = created(upload(client, owner))
    binding = created(bind(client, owner, NEIGHBOUR, "parent", [document["id"]]))
    signed = _pledge_of(client, owner, binding["id"])
    assert signed["verified"] is True and signed["version"] == "v1" and signed["sha256"] == PUBLISHED["v1.zh.md"]
    record = signed["record"]
    assert record["binding_id"] == binding["id"]
    assert record["signer_person_id"] == record["owner_person_id"] == binding["owner"]["person_id"]
    assert record["beneficiary_person_id"] == binding["beneficiary"]["person_id"]
    assert record["channel"] == "wechat" and record["client_ip"] == "127.0.0.1"
    assert record["pledge_version"] == "v1" and record["pledge_sha256"] == PUBLISHED["v1.zh.md"]
    assert record["document_sha256"] == [document["sha256"]]
    assert record["signed_at"].endswith("+08:00")
    assert record["key_id"] == signed["key_id"]
    # R17: ids and hashes only: the beneficiary by blind index, never the ID number or a name
    text = json.dumps(record, ensure_ascii=False)
    for secret in (OWNER, NEIGHBOUR, "王芳", "张伟"):
        assert secret not in text
    with app_session() as session, session.begin():
        bidx = session.scalar(select(Person.id_number_bidx).where(Person.id == binding["beneficiary"]["person_id"]))
    assert record["beneficiary_id_bidx"] == bidx


def test_r4_anyone_can_verify_a_pledge_offline_with_the_published_public_key(client, sandbox, demo):
    owner = sign_in(client, sandbox, OWNER)
    binding = created(bind(client, owner, CHILD, "child"))
    signed = _pledge_of(client, owner, binding["id"])
    key = client.get("/api/v1/pledges/public-key").get_json()
    assert key["algorithm"] == "Ed25519" and key["key_id"] == signed["key_id"]
    public_key = load_pem_public_key(key["public_key_pem"].encode())
    message = json.dumps(signed["record"], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    signature = base64.urlsafe_b64decode(signed["signature"] + "=" * (-len(signed["signature"]) % 4))
    public_key.verify(signature, message)  # raises if it does not verify
    with pytest.raises(InvalidSignature):
        public_key.verify(signature, message.replace(b'"channel":"wechat"', b'"channel":"window"'))


@pytest.mark.parametrize("tamper", [
    lambda row: {"record": row.record | {"client_ip": "10.0.0.1"}},
    lambda row: {"record": row.record | {"document_sha256": ["0" * 64]}},
    lambda row: {"signature": row.signature[:-2] + ("AA" if not row.signature.endswith("AA") else "BB")},
    lambda row: {"version": "v2"},
])
def test_r4_a_tampered_pledge_record_no_longer_verifies(client, sandbox, demo, tamper):
    owner = sign_in(client, sandbox, OWNER)
    binding = created(bind(client, owner, CHILD, "child"))
    with app_session() as session, session.begin():
        row = session.scalar(select(Pledge).where(Pledge.binding_id == binding["id"]))
        session.execute(update(Pledge).where(Pledge.id == row.id).values(**tamper(row)))
    assert _pledge_of(client, owner, binding["id"])["verified"] is False


def test_r4_a_genuine_record_copied_onto_another_binding_does_not_verify(client, sandbox, demo):
    owner = sign_in(client, sandbox, OWNER)
    first = created(bind(client, owner, CHILD, "child"))
    second = created(bind(client, owner, SPOUSE, "spouse"))
    with app_session() as session, session.begin():
        original = session.scalar(select(Pledge).where(Pledge.binding_id == first["id"]))
        session.execute(update(Pledge).where(Pledge.binding_id == second["id"])
                        .values(record=original.record, signature=original.signature))
    assert _pledge_of(client, owner, first["id"])["verified"] is True
    assert _pledge_of(client, owner, second["id"])["verified"] is False


@pytest.mark.parametrize("repoint", [
    lambda ids: {"owner_person_id": ids[SPOUSE]},
    lambda ids: {"beneficiary_person_id": ids[NEIGHBOUR]},
    lambda ids: {"relationship": "parent"},
    lambda ids: {"channel": "window"},
])
def test_r4_a_binding_row_changed_beside_its_genuine_pledge_does_not_verify(app, client, sandbox, demo, repoint):
    """The signature covers what the owner committed to: whose account pays, for whom, as what, by
    which channel. A binding row re-pointed beside its untouched record (another person's account
    paying, another beneficiary) must not be shown as verified, though record and signature are genuine."""
    owner = sign_in(client, sandbox, OWNER)
    binding = created(bind(client, owner, CHILD, "child"))
    staff = bearer(demo.tokens["auditor1"])
    path = f"/api/v1/staff/bindings/{binding['id']}/pledge"
    assert client.get(path, headers=staff).get_json()["verified"] is True
    ids = {number: person_id(app, number) for number in (SPOUSE, NEIGHBOUR)}
    with app_session() as session, session.begin():
        session.execute(update(Binding).where(Binding.id == binding["id"]).values(**repoint(ids)))
    assert client.get(path, headers=staff).get_json()["verified"] is False


def test_r4_a_pledge_signed_with_another_key_does_not_verify_after_rotation(make_app, client, sandbox, demo):
    owner = sign_in(client, sandbox, OWNER)
    binding = created(bind(client, owner, CHILD, "child"))
    other_key = base64.urlsafe_b64encode(bytes(range(100, 132))).decode()
    rotated = make_app(PLEDGE_SIGNING_KEY=other_key).test_client()
    signed = _pledge_of(rotated, owner, binding["id"])
    assert signed["verified"] is False and signed["key_id"] != rotated.get("/api/v1/pledges/public-key").get_json()[
        "key_id"]


def test_r4_the_beneficiary_and_staff_can_see_and_verify_the_pledge(client, sandbox, demo):
    owner = sign_in(client, sandbox, OWNER)
    binding = created(bind(client, owner, SPOUSE, "spouse"))
    spouse = sign_in(client, sandbox, SPOUSE)
    assert _pledge_of(client, spouse, binding["id"])["verified"] is True
    staff = client.get(f"/api/v1/staff/bindings/{binding['id']}/pledge", headers=bearer(demo.tokens["auditor1"]))
    assert staff.status_code == 200 and staff.get_json()["verified"] is True


def test_the_beneficiary_sees_the_pledge_without_the_owners_ip_and_the_blind_index(client, sandbox, demo):
    owner = sign_in(client, sandbox, OWNER)
    binding = created(bind(client, owner, SPOUSE, "spouse"))
    spouse = sign_in(client, sandbox, SPOUSE)
    seen = _pledge_of(client, spouse, binding["id"])
    assert "client_ip" not in seen["record"] and "beneficiary_id_bidx" not in seen["record"]
    assert seen["redacted"] == ["beneficiary_id_bidx", "client_ip"]
    assert "127.0.0.1" not in json.dumps(seen)
    # the signer and staff keep the whole signed record (it is what the signature covers)
    full = _pledge_of(client, owner, binding["id"])
    assert full["redacted"] == [] and full["record"]["client_ip"] == "127.0.0.1"
    assert full["record"]["beneficiary_id_bidx"]
    staff = client.get(f"/api/v1/staff/bindings/{binding['id']}/pledge", headers=bearer(demo.tokens["auditor1"]))
    assert "beneficiary_id_bidx" in staff.get_json()["record"]


def test_r4_at_the_window_the_owner_signs_and_the_staff_member_is_recorded_as_witness(client, demo):
    response = bind_at_window(client, demo.tokens["window1"], OWNER, CHILD, "child")
    binding = created(response)
    signed = client.get(f"/api/v1/staff/bindings/{binding['id']}/pledge",
                        headers=bearer(demo.tokens["window1"])).get_json()
    assert signed["verified"] is True
    record = signed["record"]
    assert record["channel"] == "window"
    assert record["signer_person_id"] == binding["owner"]["person_id"]
    assert isinstance(record["witness_staff_id"], int)
    assert record["pledge_sha256"] == pledge(client)["sha256"]


def test_every_staff_read_of_a_full_pledge_record_is_audit_logged(client, sandbox, demo):
    # Staff see what the beneficiary may not — the owner's IP, the blind index — so each staff read
    # is audit-logged like a proof document's; the parties' reads of their own pledge are not.
    owner = sign_in(client, sandbox, OWNER)
    binding = created(bind(client, owner, SPOUSE, "spouse"))
    _pledge_of(client, owner, binding["id"])
    _pledge_of(client, sign_in(client, sandbox, SPOUSE), binding["id"])
    url = f"/api/v1/staff/bindings/{binding['id']}/pledge"
    for who in ("window1", "admin1", "auditor1"):
        response = client.get(url, headers=bearer(demo.tokens[who]))
        assert response.status_code == 200 and response.get_json()["record"]["client_ip"] == "127.0.0.1"
    missing = client.get("/api/v1/staff/bindings/999999/pledge", headers=bearer(demo.tokens["auditor1"]))
    assert missing.status_code == 404
    with app_session() as session, session.begin():
        reads = session.scalars(select(AuditEvent).where(AuditEvent.action == "pledge.read")
                                .order_by(AuditEvent.id)).all()
        staff_ids = [session.scalar(select(StaffUser.id).where(StaffUser.username == who))
                     for who in ("window1", "admin1", "auditor1")]
    assert [(e.actor_kind, e.actor_id, e.target_kind, e.target_id) for e in reads] == [
        ("staff", staff_id, "binding", binding["id"]) for staff_id in staff_ids]
    assert all(e.request_id and e.ip == "127.0.0.1" and e.details["version"] == "v1" for e in reads)
    log = client.get("/api/v1/staff/audit-log?action=pledge.read", headers=bearer(demo.tokens["auditor1"]))
    assert [e["target"] for e in log.get_json()["items"]] == [{"kind": "binding", "id": binding["id"]}] * 3


def test_a_staff_read_whose_audit_row_cannot_be_written_serves_no_pledge(client, sandbox, demo, monkeypatch):
    # The audit row is written in the read's own transaction: no row, no record.
    from app.services import audit

    owner = sign_in(client, sandbox, OWNER)
    binding = created(bind(client, owner, SPOUSE, "spouse"))

    def refuse(*_args, **_kwargs):
        raise RuntimeError("audit_events is not writable")

    monkeypatch.setattr(audit, "record", refuse)
    response = client.get(f"/api/v1/staff/bindings/{binding['id']}/pledge", headers=bearer(demo.tokens["auditor1"]))
    assert response.status_code == 500 and "client_ip" not in response.get_data(as_text=True)
