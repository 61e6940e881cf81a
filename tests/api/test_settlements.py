"""Settlements through the institution API (SPEC §5; R6–R13): the split, the reasons, the errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, func, select, update

from app.extensions import app_session
from app.policy import shanghai_date
from app.settlement_plan import year_closed
from app.timefmt import iso
from models import (
    Account,
    Binding,
    Delivery,
    Journal,
    LedgerEntry,
    Notice,
    Person,
    Settlement,
    StaffUser,
    Suspension,
    Voucher,
)
from tests.helpers import bearer
from tests.money_helpers import (
    CHILD,
    HOSPITAL,
    NEIGHBOUR,
    NOT_DESIGNATED,
    OWNER,
    PHARMACY,
    SPOUSE,
    ZIBO_HOSPITAL,
    balance,
    drug,
    fresh,
    issue,
    item,
    make_binding,
    person_id,
    set_balance,
    settle,
    sign_in,
    signed,
    verify_ledger,
)

# verify-ledger must be clean after every test that moves money (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("ledger_stays_clean")


@pytest.fixture
def family(app, demo, client, sandbox):
    """张伟 (350000 fen) and 李娜 (120000 fen) are both bound to their child; 张伟 is signed in."""
    fresh(app)

    class Family:
        owner_binding = make_binding(app, OWNER, CHILD, "child")
        spouse_binding = make_binding(app, SPOUSE, CHILD, "child")
        owner_token = sign_in(client, sandbox, OWNER)
        child = person_id(app, CHILD)
        owner = person_id(app, OWNER)
        spouse = person_id(app, SPOUSE)

    return Family


def created(response, status=201):
    assert response.status_code == status, response.get_json()
    return response.get_json()


def error_code(response, status):
    assert response.status_code == status, response.get_json()
    return response.get_json()["error"]["code"]


# --------------------------------------------------------------------------- the split (R7, R9)


def test_r7_a_childs_voucher_is_paid_from_the_richest_bound_parent_first_in_wenshan(app, client, family):
    code = issue(client, family.owner_token, family.child)
    body = created(settle(client, code, [drug(30_000)]))

    assert body["status"] == "settled" and body["settlement_no"].startswith("S")
    assert (body["total_fen"], body["eligible_fen"], body["own_account_fen"], body["copay_fen"], body["cash_fen"]) \
        == (30_000, 30_000, 0, 30_000, 0)
    assert body["payments"] == [{"payer": {"person_id": family.owner, "name": "*伟",
                                           "id_number": body["payments"][0]["payer"]["id_number"]},
                                 "kind": "copay", "amount_fen": 30_000}]
    assert body["payments"][0]["payer"]["id_number"].startswith("532") and "*" in body["payments"][0]["payer"][
        "id_number"]
    assert body["beneficiary"]["name"] == "**明"
    assert body["reasons"] == []
    assert balance(app, OWNER) == 350_000 - 30_000
    assert balance(app, SPOUSE) == 120_000
    assert verify_ledger(app).exit_code == 0


def test_r7_when_the_first_owner_runs_short_the_next_one_pays_and_the_rest_is_cash(app, client, family):
    set_balance(app, OWNER, 5_000)
    set_balance(app, SPOUSE, 3_000)
    code = issue(client, family.owner_token, family.child)
    body = created(settle(client, code, [drug(10_000)]))

    # R7 balance_desc: 张伟 (5000) before 李娜 (3000); neither goes below zero.
    assert [(p["payer"]["person_id"], p["amount_fen"]) for p in body["payments"]] == [
        (family.owner, 5_000), (family.spouse, 3_000)]
    assert (body["copay_fen"], body["cash_fen"]) == (8_000, 2_000)
    assert {r["code"] for r in body["reasons"]} == {"INSUFFICIENT_BALANCE"}
    assert balance(app, OWNER) == 0 and balance(app, SPOUSE) == 0


def test_r7_a_beneficiary_with_an_own_account_pays_from_it_first(app, client, sandbox, family):
    make_binding(app, OWNER, SPOUSE, "spouse")
    spouse_token = sign_in(client, sandbox, SPOUSE)
    code = issue(client, spouse_token)
    set_balance(app, SPOUSE, 4_000)
    body = created(settle(client, code, [drug(10_000)]))

    assert [(p["kind"], p["payer"]["person_id"], p["amount_fen"]) for p in body["payments"]] == [
        ("own", family.spouse, 4_000), ("copay", family.owner, 6_000)]
    assert (body["own_account_fen"], body["copay_fen"], body["cash_fen"]) == (4_000, 6_000, 0)
    assert body["cap_used_fen"] == 6_000  # R8: own-account money does not count against the cap


def test_r9_ineligible_items_are_cash_with_a_reason_for_each(app, client, family):
    code = issue(client, family.owner_token, family.child)
    items = [drug(10_000), drug(2_000, in_catalogue=False, code="D999"), item("cosmetic", 5_000, code="C1"),
             item("consultation", 1_000, code="K1")]
    body = created(settle(client, code, items))

    assert (body["total_fen"], body["eligible_fen"], body["copay_fen"], body["cash_fen"]) == (18_000, 11_000, 11_000,
                                                                                             7_000)
    reasons = {(r["item"], r["why"]) for r in body["reasons"]}
    assert reasons == {("D999", "drug_not_in_catalogue"), ("C1", "category_not_covered")}


def test_r9_a_pharmacy_pays_only_for_catalogue_drugs(app, client, family):
    code = issue(client, family.owner_token, family.child)
    body = created(settle(client, code, [drug(3_000), item("consultation", 2_000)], inst=PHARMACY))
    assert (body["eligible_fen"], body["cash_fen"]) == (3_000, 2_000)
    assert body["reasons"][0]["why"] == "pharmacy_only_catalogue_drugs"


# --------------------------------------------------------------------------- R6 bindings in time


def test_r6_an_expense_before_the_binding_became_active_is_never_paid_retroactively(app, client, family):
    now = datetime.now(UTC)
    with app_session() as s, s.begin():
        s.execute(update(Binding).values(effective_at=now - timedelta(hours=1)))
    code = issue(client, family.owner_token, family.child)
    body = created(settle(client, code, service_time=iso(now - timedelta(hours=3))))

    assert body["copay_fen"] == 0 and body["cash_fen"] == 10_000
    assert {r["code"] for r in body["reasons"]} == {"BINDING_NOT_ACTIVE_AT_SERVICE_TIME"}
    assert balance(app, OWNER) == 350_000


def test_r11_an_owner_suspended_after_the_service_pays_nothing_more(app, client, family):
    with app_session() as s, s.begin():
        staff_id = s.scalar(select(func.min(StaffUser.id)))
        s.add(Suspension(scope="owner", person_id=family.owner, reason="cash-out", starts_at=datetime.now(UTC),
                         created_by_staff_id=staff_id, created_at=datetime.now(UTC)))
    # The child's social-security card (the suspended owner's own 亲情码 is refused outright:
    # tests/api/test_money_holes_2.py).
    body = created(signed(client, HOSPITAL, None, "POST", "/api/v1/institution/settlements", {
        "out_settlement_no": "OUT-R11-OWNER", "card": {"social_card_no": "M53262100000003", "id_number": CHILD},
        "items": [drug(10_000)], "service_time": iso(datetime.now(UTC) - timedelta(hours=2))}))

    # R11: the suspended owner pays nothing; the other parent does.
    assert [(p["payer"]["person_id"], p["amount_fen"]) for p in body["payments"]] == [(family.spouse, 10_000)]
    assert balance(app, OWNER) == 350_000


def test_r11_a_suspended_beneficiary_keeps_cash_but_no_copay(app, client, family):
    code = issue(client, family.owner_token, family.child)
    with app_session() as s, s.begin():
        staff_id = s.scalar(select(func.min(StaffUser.id)))
        s.add(Suspension(scope="beneficiary", person_id=family.child, reason="drug resale",
                         starts_at=datetime.now(UTC) - timedelta(days=1), created_by_staff_id=staff_id,
                         created_at=datetime.now(UTC)))
    body = created(settle(client, code))
    assert body["copay_fen"] == 0 and body["cash_fen"] == 10_000
    assert {r["code"] for r in body["reasons"]} == {"BENEFICIARY_SUSPENDED"}


def test_r6_an_unbinding_after_the_service_stops_the_deduction(app, client, family):
    with app_session() as s, s.begin():
        s.execute(update(Binding).values(status="unbound", ended_at=datetime.now(UTC)))
    # The child's social-security card (a 亲情码 of an ended binding is refused outright, R12 below).
    body = created(signed(client, HOSPITAL, None, "POST", "/api/v1/institution/settlements", {
        "out_settlement_no": "OUT-R6-UNBOUND", "card": {"social_card_no": "M53262100000003", "id_number": CHILD},
        "items": [drug(10_000)], "service_time": iso(datetime.now(UTC) - timedelta(hours=1))}))
    assert body["copay_fen"] == 0
    assert {(r["code"], r["when"]) for r in body["reasons"]} == {("BINDING_ENDED", "before_settlement")}


# --------------------------------------------------------------------------- R8 cap, R10 off-site


def test_r8_the_annual_cap_limits_what_other_peoples_accounts_pay(app, client, family):
    first = created(settle(client, issue(client, family.owner_token, family.child), [drug(150_000)]))
    second = created(settle(client, issue(client, family.owner_token, family.child), [drug(80_000)]))

    assert first["copay_fen"] == 150_000
    assert (second["copay_fen"], second["cash_fen"]) == (50_000, 30_000)  # Wenshan cap: 200000 fen
    assert second["cap_fen"] == 200_000 and second["cap_used_fen"] == 200_000
    assert any(r["code"] == "CAP_REACHED" for r in second["reasons"])


def test_r8_a_service_on_new_years_eve_in_shanghai_counts_in_that_year(app, client, family, make_app, tmp_path):
    # R20 refuses bills older than 72 h; only a region allowing a year's delay can settle last year's.
    policies = tmp_path / "policies"
    policies.mkdir()
    for source in Path(app.config["POLICY_DIR"]).glob("*.toml"):
        (policies / source.name).write_text(source.read_text(encoding="utf-8").replace(
            "max_settlement_delay_hours = 72", "max_settlement_delay_hours = 8784"), encoding="utf-8")
    patient = make_app(POLICY_DIR=str(policies)).test_client()
    now = datetime.now(UTC)
    eve = datetime(now.year - 1, 12, 31, 23, 30, tzinfo=UTC).astimezone(UTC) - timedelta(hours=8)  # 23:30 +08:00
    body = created(settle(patient, issue(client, family.owner_token, family.child), service_time=iso(eve)))
    assert body["year"] == now.year - 1
    if year_closed(now.year - 1, now):  # R20: after 15 January last year's cap cannot be drawn on
        assert body["copay_fen"] == 0 and {"code": "YEAR_CLOSED", "year": now.year - 1} in body["reasons"]


def test_r8_a_chronic_certification_raises_the_cap(app, client, demo, family):
    today = shanghai_date(datetime.now(UTC))
    response = client.post("/api/v1/staff/chronic-certifications", headers=bearer(demo.tokens["window1"]), json={
        "id_number": CHILD, "disease_code": "E11.9", "valid_from": (today - timedelta(days=30)).isoformat(),
        "valid_to": (today + timedelta(days=30)).isoformat()})
    assert response.status_code == 201, response.get_json()
    body = created(settle(client, issue(client, family.owner_token, family.child), [drug(250_000)]))
    assert (body["cap_fen"], body["copay_fen"]) == (300_000, 250_000)


def test_r10_off_site_treatment_without_a_filing_is_all_cash(app, client, family):
    body = created(settle(client, issue(client, family.owner_token, family.child), inst=ZIBO_HOSPITAL))
    assert (body["copay_fen"], body["cash_fen"]) == (0, 10_000)
    assert body["reasons"] == [{"code": "OFFSITE_NOT_FILED", "institution_region": "3703",
                                "beneficiary_region": "5326", "amount_fen": 10_000}]


def test_r10_off_site_treatment_with_a_filing_is_paid(app, client, demo, family):
    today = shanghai_date(datetime.now(UTC))
    response = client.post("/api/v1/staff/offsite-filings", headers=bearer(demo.tokens["window1"]), json={
        "id_number": CHILD, "region_prefix": "37", "valid_from": today.isoformat(), "valid_to": today.isoformat()})
    assert response.status_code == 201, response.get_json()
    body = created(settle(client, issue(client, family.owner_token, family.child), inst=ZIBO_HOSPITAL))
    assert body["copay_fen"] == 10_000


def test_r8_an_owner_set_yearly_limit_bounds_what_that_owner_pays(app, client, family):
    with app_session() as s, s.begin():
        s.execute(update(Binding).where(Binding.id == family.owner_binding).values(yearly_limit_fen=15_000))
    first = created(settle(client, issue(client, family.owner_token, family.child), [drug(10_000)]))
    second = created(settle(client, issue(client, family.owner_token, family.child), [drug(10_000)]))

    assert [(p["payer"]["person_id"], p["amount_fen"]) for p in first["payments"]] == [(family.owner, 10_000)]
    # R8: 张伟 has 5000 of his 15000 left this year; 李娜 pays the rest.
    assert [(p["payer"]["person_id"], p["amount_fen"]) for p in second["payments"]] == [
        (family.owner, 5_000), (family.spouse, 5_000)]


# --------------------------------------------------------------------------- vouchers at settlement (R12)


def test_r12_a_voucher_is_accepted_once(app, client, family):
    code = issue(client, family.owner_token, family.child)
    created(settle(client, code))
    assert error_code(settle(client, code), 422) == "VOUCHER_USED"


def test_r12_an_expired_voucher_is_refused(app, client, family):
    code = issue(client, family.owner_token, family.child)
    with app_session() as s, s.begin():
        s.execute(update(Voucher).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert error_code(settle(client, code), 422) == "VOUCHER_EXPIRED"


@pytest.mark.parametrize("ended_by", ["owner_unbinds", "staff_unbind", "admin_suspends_the_binding"])
def test_r12_a_family_code_stops_working_when_its_binding_stops_being_active(app, client, demo, family, ended_by):
    # 张伟 binds his wife 李娜 (who has her own account) and takes a 亲情码 for her; then the
    # binding ends or is suspended. The code was issued on the strength of that binding (R12: a
    # beneficiary *actively* bound to the holder): it must not go on spending her own account.
    binding = make_binding(app, OWNER, SPOUSE, "spouse")
    code = issue(client, family.owner_token, family.spouse)
    if ended_by == "owner_unbinds":
        path, body, token = f"/api/v1/bindings/{binding}/unbind", {}, family.owner_token
    elif ended_by == "staff_unbind":
        path, body, token = f"/api/v1/staff/bindings/{binding}/unbind", {"reason": "离婚"}, demo.tokens["window1"]
    else:
        path, token = "/api/v1/staff/suspensions", demo.tokens["admin1"]
        body = {"binding_id": binding, "reason": "套现"}
    assert client.post(path, json=body, headers=bearer(token)).status_code in (200, 201)

    response = settle(client, code, [drug(10_000)])
    assert error_code(response, 422) == "BINDING_NOT_ACTIVE", response.get_json()
    assert response.get_json()["error"]["details"]["binding_id"] == binding
    assert balance(app, SPOUSE) == 120_000
    with app_session() as s, s.begin():
        assert s.scalar(select(Voucher.used_at)) is None
        assert s.scalar(select(func.count()).select_from(Settlement)) == 0
    # Her own voucher (or the child's 亲情码 of a binding still active) works as before.
    assert created(settle(client, issue(client, family.owner_token, family.child)))["copay_fen"] == 10_000


@pytest.mark.parametrize("code", [
    "4240000000000000000000530000",  # right shape, never issued
    "42400000000000000000005300000",  # 29 digits
    "5240000000000000000000530000",  # wrong prefix
    "4240000000000000000000531111",  # wrong suffix
    "4240000000000000000000000000",  # province 00 does not exist
    "424000000000000000000053000A",
])
def test_r12_a_forged_or_malformed_voucher_is_invalid(app, client, family, code):
    assert error_code(settle(client, code), 422) == "VOUCHER_INVALID"


def test_r9_an_institution_that_is_not_designated_cannot_settle(app, client, family):
    code = issue(client, family.owner_token, family.child)
    assert error_code(settle(client, code, inst=NOT_DESIGNATED), 403) == "INSTITUTION_NOT_DESIGNATED"
    created(settle(client, code))  # the voucher was not consumed


# --------------------------------------------------------------------------- idempotency (R13), dry run


def test_r13_a_replay_returns_the_original_response_and_moves_no_more_money(app, client, family):
    code = issue(client, family.owner_token, family.child)
    first = settle(client, code, [drug(12_345)], out_no="HIS-0001")
    again = settle(client, code, [drug(12_345)], out_no="HIS-0001")

    assert first.status_code == again.status_code == 201
    assert first.get_json() == again.get_json()
    assert balance(app, OWNER) == 350_000 - 12_345


def test_r13_before_r20_a_replay_after_the_delay_window_still_returns_the_original(app, client, family,
                                                                                   monkeypatch):
    # Found by the state machine: a replay arriving more than 72 h after its service time was refused
    # as SERVICE_TIME_OUT_OF_RANGE instead of getting its original answer.
    code = issue(client, family.owner_token, family.child)
    service = iso(datetime.now(UTC) - timedelta(hours=70))
    first = created(settle(client, code, [drug(1_000)], out_no="HIS-LATE", service_time=service))
    later = datetime.now(UTC) + timedelta(hours=3)
    monkeypatch.setattr("institution_api.settlements.now", lambda: later)
    again = settle(client, code, [drug(1_000)], out_no="HIS-LATE", service_time=service)
    assert again.status_code == 201 and again.get_json() == first
    assert balance(app, OWNER) == 350_000 - 1_000
    # A new bill with that service time is out of range by then.
    fresh = issue(client, family.owner_token, family.child)
    assert error_code(settle(client, fresh, [drug(1_000)], service_time=service), 422) == "SERVICE_TIME_OUT_OF_RANGE"


def test_r13_the_same_number_with_another_body_is_a_conflict(app, client, family):
    code = issue(client, family.owner_token, family.child)
    created(settle(client, code, [drug(1_000)], out_no="HIS-0002"))
    assert error_code(settle(client, code, [drug(2_000)], out_no="HIS-0002"), 409) == "IDEMPOTENCY_CONFLICT"


def test_r13_the_same_number_with_another_voucher_is_a_conflict_and_leaves_that_voucher_unused(app, client, family):
    created(settle(client, issue(client, family.owner_token, family.child), out_no="HIS-0003"))
    fresh_code = issue(client, family.owner_token, family.child)
    assert error_code(settle(client, fresh_code, out_no="HIS-0003"), 409) == "IDEMPOTENCY_CONFLICT"
    assert balance(app, OWNER) == 350_000 - 10_000
    created(settle(client, fresh_code, out_no="HIS-0004"))


def test_a_dry_run_computes_the_same_plan_and_writes_nothing(app, client, family):
    code = issue(client, family.owner_token, family.child)
    dry = settle(client, code, [drug(7_000)], dry_run=True)
    assert dry.status_code == 200
    with app_session() as s, s.begin():
        assert s.scalar(select(func.count()).select_from(Settlement)) == 0
        assert s.scalar(select(func.count()).select_from(Journal)) == 1  # the registry's, from seeding
        assert s.scalar(select(Voucher.used_at)) is None
    real = created(settle(client, code, [drug(7_000)]))
    plan = dry.get_json()
    assert plan["status"] == "dry_run" and plan["settlement_no"] is None
    for key in ("total_fen", "eligible_fen", "own_account_fen", "copay_fen", "cash_fen", "payments", "reasons"):
        assert plan[key] == real[key]


# --------------------------------------------------------------------------- R20 times, validation


def test_r20_a_service_time_without_an_offset_is_a_400(app, client, family):
    code = issue(client, family.owner_token, family.child)
    assert error_code(settle(client, code, service_time="2025-03-01T09:30:00"), 400) == "VALIDATION_ERROR"


def test_r20_a_service_time_more_than_5_minutes_in_the_future_is_out_of_range(app, client, family):
    code = issue(client, family.owner_token, family.child)
    later = iso(datetime.now(UTC) + timedelta(minutes=6))
    assert error_code(settle(client, code, service_time=later), 422) == "SERVICE_TIME_OUT_OF_RANGE"
    # within the 5-minute clock skew it settles, at our time
    body = created(settle(client, code, service_time=iso(datetime.now(UTC) + timedelta(minutes=4))))
    assert body["copay_fen"] == 10_000


def test_r8_r20_backdated_bills_cannot_pass_the_annual_cap(app, client, family):
    """Issue 8 hole 2: bills backdated into earlier years each drew a fresh year's cap."""
    now = datetime.now(UTC)
    created(settle(client, issue(client, family.owner_token, family.child), [drug(150_000)]))
    for days in (365, 730, 4):
        response = settle(client, issue(client, family.owner_token, family.child), [drug(150_000)],
                          service_time=iso(now - timedelta(days=days)))
        assert error_code(response, 422) == "SERVICE_TIME_OUT_OF_RANGE"
        assert response.get_json()["error"]["details"]["max_settlement_delay_hours"] == 72
    # 71 hours ago is still real time at the counter (and counts against this year's cap, unless
    # that was last year)
    body = created(settle(client, issue(client, family.owner_token, family.child), [drug(150_000)],
                          service_time=iso(now - timedelta(hours=71))))
    with app_session() as session, session.begin():
        paid = session.scalar(select(func.sum(Settlement.copay_fen)))
    assert body["copay_fen"] <= 150_000 and paid <= 200_000 + (150_000 if body["year"] != now.year else 0)
    assert balance(app, OWNER) + balance(app, SPOUSE) == 350_000 + 120_000 - paid


@pytest.mark.parametrize("bad", [
    {"items": []},
    {"items": [drug(-1)]},
    {"items": [drug(10) | {"amount_fen": 1.5}]},
    {"items": [drug(10) | {"in_catalogue": "yes"}]},
    {"items": [drug(0)]},
    {"out_settlement_no": "has space"},
    {"dry_run": 1},
])
def test_a_malformed_settlement_is_a_400(app, client, family, bad):
    code = issue(client, family.owner_token, family.child)
    body = {"out_settlement_no": "HIS-1", "voucher_code": code, "items": [drug(100)]} | bad
    response = signed(client, HOSPITAL, None, "POST", "/api/v1/institution/settlements", body)
    assert error_code(response, 400) == "VALIDATION_ERROR"


# --------------------------------------------------------------------------- ledger, notices, look-up


def test_r15_a_settlement_writes_one_balanced_journal_and_a_notice_for_the_owner(app, client, family):
    code = issue(client, family.owner_token, family.child)
    body = created(settle(client, code, [drug(10_000)]))
    with app_session() as s, s.begin():
        settlement = s.scalar(select(Settlement).where(Settlement.settlement_no == body["settlement_no"]))
        journal = s.scalar(select(Journal).where(Journal.settlement_id == settlement.id))
        entries = s.execute(select(LedgerEntry.account_id, LedgerEntry.amount_fen)
                            .where(LedgerEntry.journal_id == journal.id)).all()
        kinds = dict(s.execute(select(Account.id, Account.kind)).all())
        notices = s.execute(select(Notice.person_id, Notice.kind, Notice.amount_fen)
                            .where(Notice.settlement_id == settlement.id)).all()
        deliveries = s.scalar(select(func.count()).select_from(Delivery))
    assert sum(amount for _, amount in entries) == 0
    assert sorted((kinds[a], amount) for a, amount in entries) == [("institution", 10_000), ("personal", -10_000)]
    assert sorted(notices) == sorted([(family.owner, "deduction", 10_000), (family.child, "receipt", 10_000)])
    assert deliveries >= 1  # the owner signed in from WeChat


def test_r16_the_institution_reads_its_settlement_and_no_other_institution_can(app, client, family):
    body = created(settle(client, issue(client, family.owner_token, family.child)))
    path = f"/api/v1/institution/settlements/{body['settlement_no']}"
    mine = signed(client, HOSPITAL, None, "GET", path)
    assert mine.status_code == 200
    assert mine.get_json()["copay_fen"] == body["copay_fen"] and mine.get_json()["refunds"] == []
    assert error_code(signed(client, PHARMACY, None, "GET", path), 404) == "NOT_FOUND"


def test_r2_an_inactive_insured_person_cannot_settle_with_a_voucher_issued_before(app, client, family):
    code = issue(client, family.owner_token, family.child)
    with app_session() as s, s.begin():
        s.execute(update(Person).where(Person.id == family.child).values(status="inactive"))
    assert error_code(settle(client, code), 422) == "BENEFICIARY_NOT_ELIGIBLE"


def test_r7_the_neighbour_is_paid_from_her_own_account_only(app, client, sandbox, family):
    token = sign_in(client, sandbox, NEIGHBOUR)
    body = created(settle(client, issue(client, token), [drug(100_000)]))
    assert (body["own_account_fen"], body["copay_fen"], body["cash_fen"]) == (80_000, 0, 20_000)
    assert {r["code"] for r in body["reasons"]} == {"INSUFFICIENT_BALANCE", "NO_ACTIVE_BINDING"}


@pytest.mark.postgres(reason="an unbind committing between two statements of one settlement: a real database")
def test_r12_a_family_code_is_refused_when_its_binding_ends_during_the_settlement(app, client, demo, family):
    # The voucher statement reads the binding's status without a lock; the bindings are share-locked
    # one statement later. An unbind that commits in between must still stop the 亲情码 (R12, R6):
    # the status is checked again on the locked rows.
    binding = make_binding(app, OWNER, SPOUSE, "spouse")
    code = issue(client, family.owner_token, family.spouse)
    engine = app.extensions["db.engine"]
    unbound = []

    def unbind_in_between(conn, cursor, statement, *args):
        if not unbound and statement.lstrip().startswith("SELECT bindings.id") and "FOR SHARE" in statement:
            unbound.append(True)
            with engine.begin() as other:  # another connection: commits before the bindings are read
                other.execute(update(Binding).where(Binding.id == binding)
                              .values(status="unbound", ended_at=func.now()))

    event.listen(engine, "before_cursor_execute", unbind_in_between)
    try:
        response = settle(client, code, [drug(10_000)])
    finally:
        event.remove(engine, "before_cursor_execute", unbind_in_between)
    assert unbound, "the bindings statement was not seen"
    assert error_code(response, 422) == "BINDING_NOT_ACTIVE", response.get_json()
    assert response.get_json()["error"]["details"] == {"binding_id": binding, "status": "unbound"}
    assert balance(app, SPOUSE) == 120_000
    with app_session() as s, s.begin():
        assert s.scalar(select(func.count()).select_from(Settlement)) == 0
