"""Deduction records and quota (R16, R8): each side sees its own part, nothing else; keyset pages."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.policy import shanghai_date
from tests.helpers import bearer, sign_in_wechat
from tests.money_helpers import (
    CHILD,
    NEIGHBOUR,
    OWNER,
    SPOUSE,
    drug,
    fresh,
    issue,
    make_binding,
    person_id,
    refund,
    set_balance,
    settle,
    sign_in,
)

# verify-ledger must be clean after every test that moves money (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("ledger_stays_clean")


@pytest.fixture
def family(app, demo, client, sandbox):
    """Two settlements for the child paid by 张伟 and one for 李娜 herself; everyone signed in."""
    fresh(app)
    make_binding(app, OWNER, CHILD, "child")
    make_binding(app, OWNER, SPOUSE, "spouse", yearly_limit_fen=50_000)

    class Family:
        owner = sign_in(client, sandbox, OWNER)
        spouse = sign_in(client, sandbox, SPOUSE)
        child = sign_in(client, sandbox, CHILD)
        settled = []

    set_balance(app, SPOUSE, 1_000)
    for who, amount in ((person_id(app, CHILD), 4_000), (person_id(app, CHILD), 6_000), (None, 3_000)):
        token = Family.owner if who else Family.spouse
        response = settle(client, issue(client, token, who), [drug(amount)])
        assert response.status_code == 201, response.get_json()
        Family.settled.append(response.get_json())
    return Family


def deductions(client, token, query=""):
    response = client.get(f"/api/v1/records/deductions{query}", headers=bearer(token))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_r16_the_owner_sees_every_deduction_from_their_account_newest_first(client, family):
    items = deductions(client, family.owner, "?role=owner")["items"]
    assert [(i["kind"], i["amount_fen"], i["beneficiary"]["name"], i["balance_after_fen"]) for i in items] == [
        ("copay", 2_000, "*娜", 350_000 - 12_000),
        ("copay", 6_000, "**明", 350_000 - 10_000),
        ("copay", 4_000, "**明", 350_000 - 4_000),
    ]
    first = items[-1]
    assert first["settlement_no"] == family.settled[0]["settlement_no"]
    assert first["institution"] == {"code": "H5326001", "name": "文山州人民医院"}
    assert first["owner"]["name"] == "*伟" and first["owner"]["id_number"].count("*") == 11
    assert first["service_time"].endswith("+08:00") and first["created_at"].endswith("+08:00")


def test_r16_a_beneficiary_sees_what_was_paid_for_them_but_not_the_payers_balance(client, family):
    items = deductions(client, family.child, "?role=beneficiary")["items"]
    assert [(i["owner"]["name"], i["amount_fen"], i["balance_after_fen"]) for i in items] == [
        ("*伟", 6_000, None), ("*伟", 4_000, None)]


def test_r16_a_beneficiary_with_an_own_account_sees_their_own_balance_only(client, family):
    items = deductions(client, family.spouse, "?role=beneficiary")["items"]
    # One settlement, newest first: the co-pay (second in payment order) above the own-account part.
    assert [(i["kind"], i["owner"]["name"], i["amount_fen"], i["balance_after_fen"]) for i in items] == [
        ("copay", "*伟", 2_000, None), ("own", "*娜", 1_000, 0)]


def test_r16_no_one_sees_anyone_elses_records(client, sandbox, family):
    stranger = sign_in(client, sandbox, NEIGHBOUR)
    assert deductions(client, stranger, "?role=owner")["items"] == []
    assert deductions(client, stranger, "?role=beneficiary")["items"] == []
    unverified = sign_in_wechat(client, sandbox)["access_token"]
    assert deductions(client, unverified)["items"] == []


def test_pages_follow_the_cursor_without_repeats_or_gaps_across_payments_and_refunds(client, family):
    refund(client, family.settled[0]["settlement_no"], 1_500)
    seen, cursor = [], None
    while True:
        page = deductions(client, family.owner, "?role=owner&limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert len(page["items"]) <= 2
        seen += [(i["kind"], i["amount_fen"]) for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [("refund", 1_500), ("copay", 2_000), ("copay", 6_000), ("copay", 4_000)]


def test_r20_the_year_filter_uses_the_shanghai_calendar(client, family):
    this_year = shanghai_date(datetime.now(UTC)).year
    assert len(deductions(client, family.owner, f"?year={this_year}")["items"]) == 3
    assert deductions(client, family.owner, f"?year={this_year - 1}")["items"] == []


@pytest.mark.parametrize("query", ["?role=payer", "?limit=0", "?limit=101", "?cursor=bm9wZQ", "?year=1999"])
def test_bad_record_queries_are_400(client, family, query):
    response = client.get(f"/api/v1/records/deductions{query}", headers=bearer(family.owner))
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "VALIDATION_ERROR"


def test_r8_the_owner_sees_the_quota_of_each_bound_family_member(app, client, family):
    year = shanghai_date(datetime.now(UTC)).year
    body = client.get("/api/v1/quota", headers=bearer(family.owner)).get_json()
    by_name = {i["beneficiary"]["name"]: i for i in body["items"]}
    assert set(by_name) == {"**明", "*娜"}
    child = by_name["**明"]
    assert (child["year"], child["cap_fen"], child["used_fen"], child["remaining_fen"]) == (year, 200_000, 10_000,
                                                                                            190_000)
    assert (child["as"], child["relationship"], child["paid_by_you_fen"]) == ("owner", "child", 10_000)
    spouse = by_name["*娜"]
    assert (spouse["used_fen"], spouse["yearly_limit_fen"], spouse["paid_by_you_fen"]) == (2_000, 50_000, 2_000)


def test_r8_a_beneficiary_sees_their_own_quota_and_a_refund_gives_it_back(client, family):
    refund(client, family.settled[1]["settlement_no"], 6_000)
    body = client.get("/api/v1/quota", headers=bearer(family.child)).get_json()
    assert [(i["as"], i["used_fen"], i["remaining_fen"]) for i in body["items"]] == [("beneficiary", 4_000, 196_000)]


def test_r8_the_quota_of_a_past_year_is_empty(client, family):
    year = shanghai_date(datetime.now(UTC)).year - 1
    body = client.get(f"/api/v1/quota?year={year}", headers=bearer(family.child)).get_json()
    assert [(i["year"], i["used_fen"]) for i in body["items"]] == [(year, 0)]
