"""Online binding through the mini-program API: R1–R5, R8, R16, R17, R19 (issue 3)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import func, select

from app.demo import CHILD, COUSIN_ZIBO, NEIGHBOUR, OWNER, PARENT, RETIRED_INACTIVE, SPOUSE
from app.extensions import app_session
from app.security.id_number import make_id_number
from models import AuthorizationEvent, Binding, ChronicCertification, Person, StaffUser
from tests.binding_helpers import (
    BANNA_GRANDPARENT,
    BANNA_OWNER,
    BANNA_SIBLING,
    ZIBO_GRANDCHILD,
    ZIBO_OWNER,
    ZIBO_SIBLING,
    bind,
    created,
    error_code,
    load_other_regions,
    member,
    pledge,
    policy_dir,
    records,
    sign_in,
    sign_in_with_alipay,
    upload,
)
from tests.helpers import bearer, sign_in_wechat

ISO_SHANGHAI = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+08:00")


def masked(id_number: str) -> str:
    return id_number[:3] + "*" * 11 + id_number[-4:]


@pytest.fixture
def owner(client, sandbox, demo) -> str:
    return sign_in(client, sandbox, OWNER)


# --- the happy path ---------------------------------------------------------------------------------


def test_r5_a_child_confirmed_by_household_data_is_bound_active_at_once(client, owner):
    before = datetime.now(UTC)
    binding = created(bind(client, owner, CHILD, "child"))
    assert binding["status"] == "active"
    assert binding["relationship"] == "child"
    assert binding["channel"] == "wechat"
    assert binding["role"] == "owner"
    assert binding["owner"]["name"] == "*伟" and binding["owner"]["id_number"] == masked(OWNER)
    assert binding["beneficiary"]["name"] == "**明" and binding["beneficiary"]["id_number"] == masked(CHILD)
    assert binding["ended_at"] is None and binding["yearly_limit_fen"] is None
    assert ISO_SHANGHAI.fullmatch(binding["effective_at"])
    assert datetime.fromisoformat(binding["effective_at"]) >= before.replace(microsecond=0)
    assert binding["suspended"] is False


def test_r5_the_channel_of_an_online_binding_is_the_users_platform(client, sandbox, demo):
    token = sign_in_with_alipay(client, sandbox, OWNER)
    assert created(bind(client, token, SPOUSE, "spouse"))["channel"] == "alipay"


def test_r3_a_household_row_confirms_the_inverse_relationship_too(client, sandbox, demo):
    # households: a=OWNER, b=SPOUSE, spouse; the spouse binding the owner is confirmed by the same row
    spouse = sign_in(client, sandbox, SPOUSE)
    assert created(bind(client, spouse, OWNER, "spouse"))["status"] == "active"


def test_r3_a_relative_the_registry_does_not_confirm_needs_a_proof_and_waits_for_review(client, owner):
    refused = bind(client, owner, NEIGHBOUR, "parent")
    assert refused.status_code == 422 and error_code(refused) == "PROOF_REQUIRED"
    document = created(upload(client, owner))
    binding = created(bind(client, owner, NEIGHBOUR, "parent", [document["id"]]))
    assert binding["status"] == "pending_review"
    assert binding["effective_at"] is None and binding["relationship_confirmed"] is False
    detail = client.get(f"/api/v1/bindings/{binding['id']}", headers=bearer(owner)).get_json()
    assert detail["documents"] == [{"id": document["id"], "sha256": document["sha256"], "kind": "png"}]


def test_r3_a_relationship_the_household_data_contradicts_needs_a_proof(client, owner):
    # households say the spouse is the owner's spouse, not the owner's parent
    response = bind(client, owner, SPOUSE, "parent")
    assert response.status_code == 422 and error_code(response) == "PROOF_REQUIRED"


def test_r3_a_document_of_someone_else_cannot_be_attached(client, sandbox, owner):
    neighbour = sign_in(client, sandbox, NEIGHBOUR)
    theirs = created(upload(client, neighbour))
    response = bind(client, owner, NEIGHBOUR, "parent", [theirs["id"]])
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["unknown"] == [theirs["id"]]


# --- R1, R2, R3 refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("who", [CHILD, PARENT])
def test_r1_a_resident_insured_person_without_an_account_cannot_share(client, sandbox, demo, who):
    token = sign_in(client, sandbox, who)
    response = bind(client, token, OWNER, "parent" if who == CHILD else "child")
    assert response.status_code == 422 and error_code(response) == "OWNER_NOT_ELIGIBLE"


@pytest.mark.parametrize("changes", [{"name": "张小红"}, {"social_card_no": "M53262100000009"}])
def test_r2_a_name_or_card_number_that_does_not_match_the_registry_is_refused(client, owner, changes):
    response = bind(client, owner, CHILD, "child", beneficiary=member(CHILD, **changes))
    assert response.status_code == 422 and error_code(response) == "BENEFICIARY_MISMATCH"


def test_r2_an_unknown_id_number_gives_the_same_answer_as_a_mismatch(client, owner):
    stranger = make_id_number("532621", date(2001, 1, 1), 777)
    response = bind(client, owner, CHILD, "child", beneficiary=member(CHILD, id_number=stranger))
    assert response.status_code == 422 and error_code(response) == "BENEFICIARY_MISMATCH"


def test_r18_a_beneficiary_id_number_with_a_wrong_check_digit_is_invalid(client, owner):
    wrong = CHILD[:-1] + ("0" if CHILD[-1] != "0" else "1")
    response = bind(client, owner, CHILD, "child", beneficiary=member(CHILD, id_number=wrong))
    assert response.status_code == 422 and error_code(response) == "ID_NUMBER_INVALID"


def test_r2_nobody_binds_themselves(client, owner):
    response = bind(client, owner, OWNER, "child")
    assert response.status_code == 422 and error_code(response) == "SELF_BINDING"


def test_r2_an_inactive_insured_person_cannot_be_bound(client, owner):
    response = bind(client, owner, RETIRED_INACTIVE, "parent")
    assert response.status_code == 422 and error_code(response) == "BENEFICIARY_NOT_ELIGIBLE"
    assert response.get_json()["error"]["details"]["reason"] == "inactive"


def test_r2_wenshan_refuses_a_beneficiary_insured_in_another_province(client, owner):
    response = bind(client, owner, COUSIN_ZIBO, "child")
    assert response.status_code == 422 and error_code(response) == "BENEFICIARY_NOT_ELIGIBLE"
    assert response.get_json()["error"]["details"]["reason"] == "outside_scope"


@pytest.mark.parametrize("relationship", ["sibling", "grandparent", "cousin"])
def test_r3_wenshan_allows_only_spouse_parent_and_child(client, owner, relationship):
    response = bind(client, owner, CHILD, relationship)
    assert response.status_code == 422 and error_code(response) == "RELATIONSHIP_NOT_ALLOWED"
    assert response.get_json()["error"]["details"]["allowed"] == ["spouse", "parent", "child"]


# --- R4 pledge ------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, reason", [
    ({"agreed": False}, "not_agreed"),
    ({"version": "v0"}, "not_current"),
    ({"sha256": "0" * 64}, "hash_mismatch"),
])
def test_r4_a_binding_needs_the_current_pledge_agreed_by_version_and_hash(client, owner, changes, reason):
    response = bind(client, owner, CHILD, "child", pledge=pledge(client, **changes))
    assert response.status_code == 422 and error_code(response) == "PLEDGE_INVALID"
    assert response.get_json()["error"]["details"]["reason"] == reason
    assert client.get("/api/v1/bindings", headers=bearer(owner)).get_json()["items"] == []


# --- R5 duplicates, capacity, re-binding -------------------------------------------------------------


def test_r5_the_same_family_member_cannot_be_bound_twice(client, owner):
    created(bind(client, owner, CHILD, "child"))
    again = bind(client, owner, CHILD, "child")
    assert again.status_code == 422 and error_code(again) == "ALREADY_BOUND"


def test_r5_a_pending_binding_also_counts_as_already_bound(client, owner):
    document = created(upload(client, owner))
    created(bind(client, owner, NEIGHBOUR, "parent", [document["id"]]))
    again = bind(client, owner, NEIGHBOUR, "parent", [document["id"]])
    assert again.status_code == 422 and error_code(again) == "ALREADY_BOUND"


def test_r5_the_live_pair_index_turns_a_duplicate_that_slipped_past_the_check_into_already_bound(
        client, owner, monkeypatch):
    from app.services import bindings

    created(bind(client, owner, CHILD, "child"))
    monkeypatch.setattr(bindings, "_live_counts", lambda *args, **kwargs: (0, 0))
    again = bind(client, owner, CHILD, "child")
    assert again.status_code == 422 and error_code(again) == "ALREADY_BOUND"
    with app_session() as session, session.begin():
        assert session.scalar(select(func.count()).select_from(Binding)) == 1


def test_r5_an_owner_may_have_at_most_max_beneficiaries_live_bindings(make_app, sandbox, demo, tmp_path):
    app = make_app(POLICY_DIR=policy_dir(tmp_path, "532600", max_beneficiaries=2))
    client = app.test_client()
    owner = sign_in(client, sandbox, OWNER)
    created(bind(client, owner, CHILD, "child"))
    document = created(upload(client, owner))
    created(bind(client, owner, NEIGHBOUR, "parent", [document["id"]]))  # pending counts too
    third = bind(client, owner, SPOUSE, "spouse")
    assert third.status_code == 422 and error_code(third) == "TOO_MANY_BINDINGS"
    assert third.get_json()["error"]["details"] == {"max_beneficiaries": 2}


def test_r5_unbinding_frees_a_place_and_rebinding_is_a_new_binding(client, owner):
    first = created(bind(client, owner, CHILD, "child"))
    unbound = client.post(f"/api/v1/bindings/{first['id']}/unbind", json={"reason": "不再需要"},
                          headers=bearer(owner)).get_json()
    assert unbound["status"] == "unbound" and ISO_SHANGHAI.fullmatch(unbound["ended_at"])
    second = created(bind(client, owner, CHILD, "child"))
    assert second["id"] != first["id"] and second["status"] == "active"
    old = client.get(f"/api/v1/bindings/{first['id']}", headers=bearer(owner)).get_json()
    assert old["status"] == "unbound" and old["ended_at"] == unbound["ended_at"]
    assert second["effective_at"] >= unbound["ended_at"]


def test_r5_unbinding_twice_is_invalid_state(client, owner):
    binding = created(bind(client, owner, CHILD, "child"))
    url = f"/api/v1/bindings/{binding['id']}/unbind"
    assert client.post(url, json={}, headers=bearer(owner)).status_code == 200
    again = client.post(url, json={}, headers=bearer(owner))
    assert again.status_code == 409 and error_code(again) == "INVALID_STATE"


def test_r5_an_owner_can_withdraw_a_binding_still_waiting_for_review(client, owner):
    document = created(upload(client, owner))
    pending = created(bind(client, owner, NEIGHBOUR, "parent", [document["id"]]))
    withdrawn = client.post(f"/api/v1/bindings/{pending['id']}/unbind", json={"reason": "填错了"},
                            headers=bearer(owner)).get_json()
    assert withdrawn["status"] == "unbound" and withdrawn["effective_at"] is None


# --- who sees what (R16) -----------------------------------------------------------------------------


def test_r16_a_beneficiary_sees_the_bindings_that_pay_for_them_but_cannot_end_or_limit_them(client, sandbox, owner):
    binding = created(bind(client, owner, SPOUSE, "spouse"))
    spouse = sign_in(client, sandbox, SPOUSE)
    listed = client.get("/api/v1/bindings", headers=bearer(spouse)).get_json()["items"]
    assert [(b["id"], b["role"]) for b in listed] == [(binding["id"], "beneficiary")]
    assert client.get(f"/api/v1/bindings/{binding['id']}", headers=bearer(spouse)).status_code == 200
    unbind = client.post(f"/api/v1/bindings/{binding['id']}/unbind", json={}, headers=bearer(spouse))
    assert unbind.status_code == 403
    limit = client.patch(f"/api/v1/bindings/{binding['id']}", json={"yearly_limit_fen": 100},
                         headers=bearer(spouse))
    assert limit.status_code == 403


def test_r16_the_list_can_be_narrowed_to_one_role(client, sandbox, owner):
    created(bind(client, owner, SPOUSE, "spouse"))
    spouse = sign_in(client, sandbox, SPOUSE)
    created(bind(client, spouse, OWNER, "spouse"))
    mine = client.get("/api/v1/bindings?role=owner", headers=bearer(spouse)).get_json()["items"]
    theirs = client.get("/api/v1/bindings?role=beneficiary", headers=bearer(spouse)).get_json()["items"]
    assert [b["role"] for b in mine] == ["owner"] and [b["role"] for b in theirs] == ["beneficiary"]


def test_r16_a_user_never_sees_a_binding_they_are_not_party_to(client, sandbox, owner):
    binding = created(bind(client, owner, CHILD, "child"))
    neighbour = sign_in(client, sandbox, NEIGHBOUR)
    assert client.get("/api/v1/bindings", headers=bearer(neighbour)).get_json()["items"] == []
    for method, path, body in (
        ("get", f"/api/v1/bindings/{binding['id']}", None),
        ("get", f"/api/v1/bindings/{binding['id']}/pledge", None),
        ("post", f"/api/v1/bindings/{binding['id']}/unbind", {}),
        ("post", f"/api/v1/bindings/{binding['id']}/confirm", None),
        ("patch", f"/api/v1/bindings/{binding['id']}", {"yearly_limit_fen": 1}),
        ("get", "/api/v1/bindings/999999", None),
    ):
        response = getattr(client, method)(path, json=body, headers=bearer(neighbour))
        assert response.status_code == 404, (method, path)
        assert error_code(response) == "NOT_FOUND"
    assert client.get(f"/api/v1/bindings/{binding['id']}", headers=bearer(owner)).get_json()["status"] == "active"


def test_a_user_who_has_not_verified_their_identity_is_asked_to_first(client, sandbox, demo):
    token = sign_in_wechat(client, sandbox)["access_token"]
    for response in (bind(client, token, CHILD, "child"), client.get("/api/v1/bindings", headers=bearer(token))):
        assert response.status_code == 403
        assert response.get_json()["error"]["details"] == {"reason": "identity_not_verified"}


def test_bindings_need_a_signed_in_user(client, demo):
    assert client.get("/api/v1/bindings").status_code == 401


def test_the_binding_list_is_keyset_paginated_newest_first(client, owner):
    ids = [created(bind(client, owner, who, rel))["id"] for who, rel in
           ((CHILD, "child"), (SPOUSE, "spouse"), (PARENT, "parent"))]
    first = client.get("/api/v1/bindings?limit=2", headers=bearer(owner)).get_json()
    assert [b["id"] for b in first["items"]] == ids[::-1][:2]
    rest = client.get(f"/api/v1/bindings?limit=2&cursor={first['next_cursor']}", headers=bearer(owner)).get_json()
    assert [b["id"] for b in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    assert client.get("/api/v1/bindings?status=unbound", headers=bearer(owner)).get_json()["items"] == []


# --- R8 owner's yearly limit ---------------------------------------------------------------------------


def test_r8_an_owner_sets_changes_and_clears_a_yearly_limit(client, owner):
    binding = created(bind(client, owner, CHILD, "child"))
    url = f"/api/v1/bindings/{binding['id']}"
    assert client.patch(url, json={"yearly_limit_fen": 50000}, headers=bearer(owner)).get_json()[
        "yearly_limit_fen"] == 50000
    assert client.patch(url, json={"yearly_limit_fen": None}, headers=bearer(owner)).get_json()[
        "yearly_limit_fen"] is None
    changes = [r["details"] for r in records(client, owner) if r["event"] == "limit_changed"]
    assert changes == [{"from_fen": 50000, "to_fen": None}, {"from_fen": None, "to_fen": 50000}]


def test_r8_a_limit_above_the_wenshan_cap_is_refused(client, owner):
    binding = created(bind(client, owner, CHILD, "child"))
    response = client.patch(f"/api/v1/bindings/{binding['id']}", json={"yearly_limit_fen": 200001},
                            headers=bearer(owner))
    assert response.status_code == 422 and error_code(response) == "LIMIT_ABOVE_CAP"
    assert response.get_json()["error"]["details"] == {"cap_fen": 200000}


@pytest.mark.parametrize("value", [-1, 1.5, "100"])
def test_r8_a_limit_must_be_whole_non_negative_fen(client, owner, value):
    binding = created(bind(client, owner, CHILD, "child"))
    response = client.patch(f"/api/v1/bindings/{binding['id']}", json={"yearly_limit_fen": value},
                            headers=bearer(owner))
    assert response.status_code == 400 and error_code(response) == "VALIDATION_ERROR"


def test_r8_a_beneficiary_with_a_chronic_certification_today_allows_the_chronic_extra(client, owner):
    binding = created(bind(client, owner, CHILD, "child"))
    with app_session() as session, session.begin():
        staff_id = session.scalar(select(StaffUser.id).limit(1))
        session.add(ChronicCertification(person_id=binding["beneficiary"]["person_id"], disease_code="I10",
                                         valid_from=date(2000, 1, 1), valid_to=date(2099, 12, 31),
                                         created_by_staff_id=staff_id))
    response = client.patch(f"/api/v1/bindings/{binding['id']}", json={"yearly_limit_fen": 300000},
                            headers=bearer(owner))
    assert response.status_code == 200 and response.get_json()["yearly_limit_fen"] == 300000
    above = client.patch(f"/api/v1/bindings/{binding['id']}", json={"yearly_limit_fen": 300001},
                         headers=bearer(owner))
    assert error_code(above) == "LIMIT_ABOVE_CAP"


def test_r8_an_ended_binding_takes_no_new_limit(client, owner):
    binding = created(bind(client, owner, CHILD, "child"))
    client.post(f"/api/v1/bindings/{binding['id']}/unbind", json={}, headers=bearer(owner))
    response = client.patch(f"/api/v1/bindings/{binding['id']}", json={"yearly_limit_fen": 100},
                            headers=bearer(owner))
    assert response.status_code == 409 and error_code(response) == "INVALID_STATE"


# --- R5 beneficiary consent -------------------------------------------------------------------------


@pytest.fixture
def consent_app(make_app, demo, tmp_path):
    return make_app(POLICY_DIR=policy_dir(tmp_path, "532800", beneficiary_consent="required"), REGION_CODE="532800")


def test_r5_where_consent_is_required_an_adult_beneficiary_confirms_before_the_binding_is_active(
        consent_app, sandbox):
    client = consent_app.test_client()
    owner = sign_in(client, sandbox, OWNER)
    binding = created(bind(client, owner, SPOUSE, "spouse"))
    assert binding["status"] == "pending_consent" and binding["effective_at"] is None
    owner_try = client.post(f"/api/v1/bindings/{binding['id']}/confirm", headers=bearer(owner))
    assert owner_try.status_code == 403
    spouse = sign_in(client, sandbox, SPOUSE)
    confirmed = client.post(f"/api/v1/bindings/{binding['id']}/confirm", headers=bearer(spouse))
    assert confirmed.status_code == 200
    assert confirmed.get_json()["status"] == "active" and ISO_SHANGHAI.fullmatch(confirmed.get_json()["effective_at"])
    again = client.post(f"/api/v1/bindings/{binding['id']}/confirm", headers=bearer(spouse))
    assert again.status_code == 409 and error_code(again) == "INVALID_STATE"
    events = [(r["event"], r["actor"]["kind"]) for r in records(client, spouse)][::-1]
    assert events == [("created", "owner"), ("pending_consent", "owner"), ("confirmed", "beneficiary"),
                      ("activated", "beneficiary")]


def test_r5_a_child_under_16_needs_no_consent_even_where_it_is_required(consent_app, sandbox):
    client = consent_app.test_client()
    owner = sign_in(client, sandbox, OWNER)
    assert created(bind(client, owner, CHILD, "child"))["status"] == "active"


def test_r5_a_binding_waiting_for_consent_cannot_be_confirmed_by_a_stranger(consent_app, sandbox):
    client = consent_app.test_client()
    owner = sign_in(client, sandbox, OWNER)
    binding = created(bind(client, owner, SPOUSE, "spouse"))
    neighbour = sign_in(client, sandbox, NEIGHBOUR)
    assert client.post(f"/api/v1/bindings/{binding['id']}/confirm", headers=bearer(neighbour)).status_code == 404


# --- the three regions -------------------------------------------------------------------------------


def test_zibo_binds_siblings_and_grandchildren_and_beneficiaries_of_any_province(make_app, sandbox, demo):
    app = make_app(REGION_CODE="370300")
    load_other_regions(app)
    client = app.test_client()
    owner = sign_in(client, sandbox, ZIBO_OWNER)
    assert created(bind(client, owner, ZIBO_SIBLING, "sibling"))["status"] == "active"
    document = created(upload(client, owner))
    assert created(bind(client, owner, ZIBO_GRANDCHILD, "grandchild", [document["id"]]))["status"] == \
        "pending_review"
    # scope "any": a Yunnan-insured relative can be bound by a Zibo owner (with a proof)
    assert created(bind(client, owner, CHILD, "child", [document["id"]]))["status"] == "pending_review"


def test_zibo_refuses_an_owner_insured_in_yunnan(make_app, sandbox, demo):
    client = make_app(REGION_CODE="370300").test_client()
    owner = sign_in(client, sandbox, OWNER)
    response = bind(client, owner, CHILD, "child")
    assert response.status_code == 422 and error_code(response) == "OWNER_NOT_ELIGIBLE"
    assert response.get_json()["error"]["details"]["reason"] == "outside_province"


def test_xishuangbanna_binds_a_grandparent_in_the_province_but_not_a_relative_from_shandong(make_app, sandbox, demo):
    app = make_app(REGION_CODE="532800")
    load_other_regions(app)
    client = app.test_client()
    owner = sign_in(client, sandbox, BANNA_OWNER)
    # households: the owner is the grandparent's grandchild, so the grandparent is confirmed
    assert created(bind(client, owner, BANNA_GRANDPARENT, "grandparent"))["status"] == "active"
    document = created(upload(client, owner))
    assert created(bind(client, owner, BANNA_SIBLING, "sibling", [document["id"]]))["status"] == "pending_review"
    response = bind(client, owner, ZIBO_SIBLING, "sibling", [document["id"]])
    assert response.status_code == 422 and error_code(response) == "BENEFICIARY_NOT_ELIGIBLE"


def test_wenshan_refuses_a_grandparent_that_xishuangbanna_accepts(app, client, sandbox, demo):
    load_other_regions(app)
    owner = sign_in(client, sandbox, BANNA_OWNER)
    response = bind(client, owner, BANNA_GRANDPARENT, "grandparent")
    assert response.status_code == 422 and error_code(response) == "RELATIONSHIP_NOT_ALLOWED"


# --- R17, R19, nothing deleted --------------------------------------------------------------------------


def test_r17_no_raw_id_number_card_number_or_name_in_any_binding_response(client, sandbox, owner):
    bodies = [bind(client, owner, CHILD, "child").get_data(as_text=True)]
    binding_id = client.get("/api/v1/bindings", headers=bearer(owner)).get_json()["items"][0]["id"]
    spouse = sign_in(client, sandbox, SPOUSE)
    bodies += [
        client.get("/api/v1/bindings", headers=bearer(owner)).get_data(as_text=True),
        client.get(f"/api/v1/bindings/{binding_id}", headers=bearer(owner)).get_data(as_text=True),
        client.get(f"/api/v1/bindings/{binding_id}/pledge", headers=bearer(owner)).get_data(as_text=True),
        client.get("/api/v1/records/authorizations", headers=bearer(owner)).get_data(as_text=True),
        bind(client, owner, SPOUSE, "spouse", beneficiary=member(SPOUSE, name="李四")).get_data(as_text=True),
        client.get("/api/v1/bindings", headers=bearer(spouse)).get_data(as_text=True),
    ]
    for text in bodies:
        for secret in (OWNER, CHILD, SPOUSE, "M53262100000003", "张小明", "张伟", "李娜", "李四"):
            assert secret not in text


def test_r19_binding_creation_is_rate_limited_per_user(make_app, sandbox, demo):
    client = make_app(RATE_LIMIT_PER_USER="2/60").test_client()
    owner = sign_in(client, sandbox, OWNER)
    assert bind(client, owner, RETIRED_INACTIVE, "parent").status_code == 422
    assert bind(client, owner, RETIRED_INACTIVE, "parent").status_code == 422
    limited = bind(client, owner, CHILD, "child")
    assert limited.status_code == 429 and error_code(limited) == "RATE_LIMITED"
    assert int(limited.headers["Retry-After"]) >= 1


def test_r5_nothing_is_deleted_an_unbound_binding_keeps_its_row_and_history(client, owner):
    binding = created(bind(client, owner, CHILD, "child"))
    client.post(f"/api/v1/bindings/{binding['id']}/unbind", json={}, headers=bearer(owner))
    with app_session() as session, session.begin():
        row = session.get(Binding, binding["id"])
        assert row is not None and row.status == "unbound"
        events = session.scalars(select(AuthorizationEvent.event).where(
            AuthorizationEvent.binding_id == binding["id"]).order_by(AuthorizationEvent.id)).all()
        assert events == ["created", "activated", "unbound"]
        assert session.scalar(select(func.count()).select_from(Person)) >= 7


def test_the_openapi_document_lists_the_binding_endpoints(client):
    paths = client.get("/api/openapi.json").get_json()["paths"]
    for path in ("/api/v1/bindings", "/api/v1/bindings/{binding_id}", "/api/v1/bindings/{binding_id}/unbind",
                 "/api/v1/bindings/{binding_id}/confirm", "/api/v1/bindings/{binding_id}/pledge",
                 "/api/v1/documents", "/api/v1/pledges/current", "/api/v1/pledges/public-key",
                 "/api/v1/records/authorizations", "/api/v1/staff/bindings", "/api/v1/staff/suspensions",
                 "/api/v1/staff/audit-log"):
        assert path in paths, path
