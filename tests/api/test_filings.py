"""Staff inputs of the engine (SPEC §5): off-site filings (R10) and chronic certifications (R8), audited."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.extensions import app_session
from models import AuditEvent, ChronicCertification, OffsiteFiling
from tests.helpers import bearer
from tests.money_helpers import CHILD, OWNER, person_id, sign_in

FILINGS = "/api/v1/staff/offsite-filings"
CERTS = "/api/v1/staff/chronic-certifications"


def filing(**changes):
    return {"id_number": CHILD, "region_prefix": "3703", "valid_from": "2025-03-01", "valid_to": "2025-06-30"} | changes


def cert(**changes):
    return {"id_number": CHILD, "disease_code": "E11.9", "valid_from": "2025-01-01", "valid_to": "2025-12-31"} | changes


@pytest.mark.parametrize("role", ["window1", "admin1"])
def test_r10_window_and_admin_staff_record_an_off_site_filing(app, client, demo, role):
    response = client.post(FILINGS, json=filing(), headers=bearer(demo.tokens[role]))
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["person"] == {"person_id": person_id(app, CHILD), "name": "**明",
                              "id_number": CHILD[:3] + "*" * 11 + CHILD[-4:]}
    assert (body["region_prefix"], body["valid_from"], body["valid_to"]) == ("3703", "2025-03-01", "2025-06-30")
    with app_session() as s, s.begin():
        row = s.scalar(select(OffsiteFiling))
        audit = s.scalar(select(AuditEvent).where(AuditEvent.action == "offsite_filing.create"))
    assert row.person_id == person_id(app, CHILD) and row.region_prefix == "3703"
    assert (audit.actor_kind, audit.target_id) == ("staff", row.id)
    assert CHILD not in str(audit.details) and "张小明" not in str(audit.details)


def test_r8_a_chronic_certification_is_recorded_once_and_its_disease_stays_out_of_the_audit_log(app, client, demo):
    token = bearer(demo.tokens["window1"])
    first = client.post(CERTS, json=cert(), headers=token)
    assert first.status_code == 201 and first.get_json()["disease_code"] == "E11.9"
    again = client.post(CERTS, json=cert(), headers=token)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "INVALID_STATE"
    with app_session() as s, s.begin():
        assert len(s.scalars(select(ChronicCertification)).all()) == 1
        audit = s.scalar(select(AuditEvent).where(AuditEvent.action == "chronic_certification.create"))
    assert "E11.9" not in str(audit.details)


def test_auditors_and_users_cannot_record_filings(app, client, demo, sandbox):
    assert client.post(FILINGS, json=filing(), headers=bearer(demo.tokens["auditor1"])).status_code == 403
    user = sign_in(client, sandbox, OWNER)
    assert client.post(CERTS, json=cert(), headers=bearer(user)).status_code == 403
    assert client.post(CERTS, json=cert()).status_code == 401


@pytest.mark.parametrize("body, status, code", [
    (filing(region_prefix="370"), 400, "VALIDATION_ERROR"),
    (filing(region_prefix="00"), 400, "VALIDATION_ERROR"),
    (filing(valid_from="2025-07-01"), 400, "VALIDATION_ERROR"),
    (filing(valid_to="2025-02-30"), 400, "VALIDATION_ERROR"),
    (filing(id_number="532621201509011350"), 422, "ID_NUMBER_INVALID"),
    (filing(id_number="110101199001011237"), 404, "NOT_FOUND"),
])
def test_r10_bad_filings_are_refused(app, client, demo, body, status, code):
    response = client.post(FILINGS, json=body, headers=bearer(demo.tokens["window1"]))
    assert response.status_code == status and response.get_json()["error"]["code"] == code


def test_a_bad_disease_code_is_refused(app, client, demo):
    response = client.post(CERTS, json=cert(disease_code="E11 9;"), headers=bearer(demo.tokens["window1"]))
    assert response.status_code == 400
