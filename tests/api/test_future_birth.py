"""R18 everywhere: an ID number whose birth date lies in the future (Shanghai date) is ID_NUMBER_INVALID
at every door an ID number comes in by: identity, online and window binding, the staff search,
filings, certifications, suspensions and the registry load."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.demo import CHILD, OWNER
from app.extensions import app_session
from app.policy import shanghai_date
from app.security.id_number import make_id_number
from app.services.registry import RegistryInvalid, load_registry
from tests.binding_helpers import bind, bind_at_window, member, pledge, sign_in
from tests.helpers import bearer, sign_in_wechat

TOMORROW = shanghai_date(datetime.now(UTC)) + timedelta(days=1)
FUTURE = make_id_number("532621", TOMORROW, 135)
TODAY_BORN = make_id_number("532621", TOMORROW - timedelta(days=1), 135)


def assert_future_refused(response) -> None:
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert (error["code"], error["details"].get("reason")) == ("ID_NUMBER_INVALID", "birth_date")


def test_r18_identity_refuses_a_birth_date_in_the_future(client, sandbox, demo):
    token = sign_in_wechat(client, sandbox)["access_token"]
    response = client.post("/api/v1/me/identity", json={"name": "张三", "id_number": FUTURE}, headers=bearer(token))
    assert_future_refused(response)


def test_r18_a_person_born_today_is_a_real_birth_date(client, sandbox, demo):
    token = sign_in_wechat(client, sandbox)["access_token"]
    response = client.post("/api/v1/me/identity", json={"name": "张三", "id_number": TODAY_BORN},
                           headers=bearer(token))
    # A valid number (no proof given, so not linked): never ID_NUMBER_INVALID.
    assert response.get_json()["error"]["code"] == "IDENTITY_NOT_PROVEN"


def test_r18_online_binding_refuses_a_future_birth_date(client, sandbox, demo):
    owner = sign_in(client, sandbox, OWNER)
    body = {"beneficiary": member(CHILD, id_number=FUTURE), "relationship": "child", "proof_document_ids": [],
            "pledge": pledge(client)}
    assert_future_refused(client.post("/api/v1/bindings", json=body, headers=bearer(owner)))
    assert bind(client, owner, CHILD, "child").status_code == 201  # the same request with a real number passes


@pytest.mark.parametrize("side", ["owner", "beneficiary"])
def test_r18_window_binding_refuses_a_future_birth_date(client, demo, side):
    owner, beneficiary = (FUTURE, CHILD) if side == "owner" else (OWNER, CHILD)
    changes = {"beneficiary": member(CHILD, id_number=FUTURE)} if side == "beneficiary" else {}
    response = bind_at_window(client, demo.tokens["window1"], owner, beneficiary, "child", **changes)
    assert_future_refused(response)


def test_r18_staff_search_refuses_a_future_birth_date(client, demo):
    response = client.post("/api/v1/staff/bindings/search", json={"owner_id_number": FUTURE},
                           headers=bearer(demo.tokens["window1"]))
    assert_future_refused(response)


@pytest.mark.parametrize(("path", "extra"), [
    ("/api/v1/staff/offsite-filings", {"region_prefix": "37"}),
    ("/api/v1/staff/chronic-certifications", {"disease_code": "E11.9"}),
])
def test_r18_filings_refuse_a_future_birth_date(client, demo, path, extra):
    today = shanghai_date(datetime.now(UTC)).isoformat()
    body = {"id_number": FUTURE, "valid_from": today, "valid_to": today} | extra
    assert_future_refused(client.post(path, json=body, headers=bearer(demo.tokens["window1"])))


@pytest.mark.parametrize("field", ["owner_id_number", "beneficiary_id_number"])
def test_r18_suspensions_refuse_a_future_birth_date(client, demo, field):
    response = client.post("/api/v1/staff/suspensions", json={field: FUTURE, "reason": "套现"},
                           headers=bearer(demo.tokens["admin1"]))
    assert_future_refused(response)


def test_r18_the_registry_load_refuses_a_future_birth_date(app):
    row = {"id_number": FUTURE, "name": "张三", "social_card_no": "M53262100000099", "insurance_type": "resident",
           "region_code": "532621", "status": "active"}
    with app_session() as session, pytest.raises(RegistryInvalid) as excinfo:
        load_registry(session, app.extensions["domain"].pii, {"persons": [row]}, datetime.now(UTC))
    assert any("persons[1]: id_number" in problem for problem in excinfo.value.problems)
