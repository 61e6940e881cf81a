"""Unit tests for the pure settlement calculation and refund split (SPEC R6–R11, R14)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from app.errors import InstitutionNotDesignated, RefundExceedsPaid, ServiceTimeOutOfRange, ValidationFailed
from app.settlement_plan import (
    AccountFacts,
    BeneficiaryFacts,
    CapState,
    ChronicCertification,
    CopaySource,
    InstitutionFacts,
    LineItem,
    OffsiteFiling,
    PaidPart,
    Plan,
    PlanPolicy,
    PlanRequest,
    check_service_time,
    compute_plan,
    plan_refund,
    refundable_fen,
    year_closed,
)

SERVICE_TIME = datetime(2025, 3, 1, 1, 30, tzinfo=UTC)  # 2025-03-01 09:30 in Shanghai
SERVICE_DATE = date(2025, 3, 1)
SETTLE_TIME = SERVICE_TIME + timedelta(minutes=10)
LONG_AGO = datetime(2024, 1, 1, tzinfo=UTC)

WENSHAN = PlanPolicy(annual_cap_fen=200_000, chronic_extra_fen=100_000, copay_order="balance_desc")
ZIBO = PlanPolicy(annual_cap_fen=None, chronic_extra_fen=None, copay_order="binding_order")
BENEFICIARY = "p-ben"


# --------------------------------------------------------------------------- builders


def item(category: str = "drug", amount_fen: int = 10_000, *, in_catalogue: bool = True, code: str = "X1"):
    return LineItem(
        code=code, name="item", category=category, in_catalogue=in_catalogue, amount_fen=amount_fen
    )


def source(
    binding_id: str,
    balance_fen: int,
    *,
    effective_at: datetime | None = LONG_AGO,
    ended_at: datetime | None = None,
    status_now: str = "active",
    suspended_at_service_time: bool = False,
    owner_suspended: bool = False,
    yearly_limit_fen: int | None = None,
    paid_this_year_fen: int = 0,
    account_id: str | None = None,
    owner: str | None = None,
) -> CopaySource:
    owner = owner or f"owner-{binding_id}"
    return CopaySource(
        binding_id=binding_id,
        owner_person_id=owner,
        account=AccountFacts(account_id or f"acc-{binding_id}", owner, balance_fen),
        effective_at=effective_at,
        ended_at=ended_at,
        status_now=status_now,
        suspended_at_service_time=suspended_at_service_time,
        owner_suspended=owner_suspended,
        yearly_limit_fen=yearly_limit_fen,
        paid_this_year_by_this_binding_fen=paid_this_year_fen,
    )


ONE_DRUG = (item(),)


def make_request(
    items=ONE_DRUG,
    *,
    sources=(),
    own_balance_fen: int | None = None,
    beneficiary_suspended: bool = False,
    beneficiary_region: str = "532621",
    institution_region: str = "532601",
    institution_kind: str = "hospital",
    designated: bool = True,
    active: bool = True,
    cap_used_fen: int = 0,
    certifications=(),
    filings=(),
    policy: PlanPolicy = WENSHAN,
    service_time: datetime = SERVICE_TIME,
    service_date: date = SERVICE_DATE,
    settle_time: datetime = SETTLE_TIME,
) -> PlanRequest:
    own = None if own_balance_fen is None else AccountFacts("acc-own", BENEFICIARY, own_balance_fen)
    return PlanRequest(
        items=items,
        institution=InstitutionFacts("H5326001", institution_kind, institution_region, designated, active),
        beneficiary=BeneficiaryFacts(BENEFICIARY, beneficiary_region, own, beneficiary_suspended),
        sources=sources,
        cap=CapState(used_fen=cap_used_fen, chronic_certifications=certifications),
        filings=filings,
        policy=policy,
        service_time=service_time,
        service_date=service_date,
        settle_time=settle_time,
    )


def paid_by(plan: Plan) -> list[tuple[str | None, int]]:
    """(binding id or 'own', amount) in payment order."""
    return [(p.binding_id or "own", p.amount_fen) for p in plan.payments]


def codes(plan: Plan) -> list[str]:
    return [r["code"] for r in plan.reasons]


def assert_balanced(plan: Plan) -> None:
    assert plan.total_fen == plan.eligible_fen + plan.ineligible_fen
    assert plan.total_fen == plan.own_account_fen + plan.copay_fen + plan.cash_fen
    assert plan.eligible_fen == plan.own_account_fen + plan.copay_fen + plan.eligible_cash_fen
    assert [p.sequence for p in plan.payments] == list(range(1, len(plan.payments) + 1))
    assert all(p.amount_fen > 0 for p in plan.payments)


# --------------------------------------------------------------------------- R9 eligibility


@pytest.mark.parametrize(
    ("category", "in_catalogue", "kind", "eligible", "why"),
    [
        ("drug", True, "hospital", True, None),
        ("drug", False, "hospital", False, "drug_not_in_catalogue"),
        ("consultation", False, "hospital", True, None),
        ("examination", False, "clinic", True, None),
        ("treatment", False, "hospital", True, None),
        ("tcm_treatment", False, "clinic", True, None),
        ("medical_consumable", False, "hospital", True, None),
        ("public_health", False, "hospital", False, "category_not_covered"),
        ("fitness", False, "hospital", False, "category_not_covered"),
        ("cosmetic", True, "hospital", False, "category_not_covered"),
        ("daily_goods", False, "hospital", False, "category_not_covered"),
        ("other", False, "clinic", False, "category_not_covered"),
        ("spa_voucher", False, "hospital", False, "unknown_category"),
        ("drug", True, "pharmacy", True, None),
        ("drug", False, "pharmacy", False, "drug_not_in_catalogue"),
        ("medical_consumable", True, "pharmacy", False, "pharmacy_only_catalogue_drugs"),
        ("daily_goods", False, "pharmacy", False, "pharmacy_only_catalogue_drugs"),
    ],
    ids=lambda v: str(v),
)
def test_r9_only_eligible_categories_are_paid_from_accounts(category, in_catalogue, kind, eligible, why):
    """R9: eligible categories pay from accounts; the rest is cash with a reason naming the item."""
    plan = compute_plan(
        make_request(
            (item(category, 5_000, in_catalogue=in_catalogue, code="L1"),),
            own_balance_fen=100_000,
            institution_kind=kind,
        )
    )
    assert_balanced(plan)
    if eligible:
        assert (plan.eligible_fen, plan.own_account_fen, plan.cash_fen, plan.reasons) == (5_000, 5_000, 0, ())
    else:
        assert (plan.eligible_fen, plan.own_account_fen, plan.cash_fen) == (0, 0, 5_000)
        assert plan.reasons == (
            {
                "code": "ITEM_NOT_ELIGIBLE",
                "line": 0,
                "item": "L1",
                "category": category,
                "amount_fen": 5_000,
                "why": why,
            },
        )


def test_r9_mixed_bill_pays_eligible_lines_and_leaves_the_rest_in_cash():
    """R9: a non-catalogue drug at a hospital is cash while catalogue lines are paid."""
    items = (
        item("drug", 3_000, code="D1"),
        item("drug", 2_000, in_catalogue=False, code="D2"),
        item("consultation", 1_000, code="C1"),
        item("cosmetic", 0, code="Z0"),
    )
    plan = compute_plan(make_request(items, own_balance_fen=100_000))
    assert_balanced(plan)
    assert (plan.total_fen, plan.eligible_fen, plan.own_account_fen, plan.cash_fen) == (
        6_000,
        4_000,
        4_000,
        2_000,
    )
    assert [(r["item"], r["why"]) for r in plan.reasons] == [("D2", "drug_not_in_catalogue")]


@pytest.mark.parametrize(
    ("designated", "active"),
    [(False, True), (True, False), (False, False)],
    ids=["not-designated", "inactive", "neither"],
)
def test_r9_institution_must_be_designated_and_active(designated, active):
    """R9: settling at a non-designated or inactive institution raises INSTITUTION_NOT_DESIGNATED."""
    with pytest.raises(InstitutionNotDesignated) as caught:
        compute_plan(make_request(designated=designated, active=active, own_balance_fen=1_000))
    assert caught.value.code == "INSTITUTION_NOT_DESIGNATED"
    assert caught.value.status == 403


# --------------------------------------------------------------------------- R7 order


@pytest.mark.parametrize(
    ("policy", "sources", "expected"),
    [
        pytest.param(
            WENSHAN,
            [
                source("old-small", 3_000),
                source("new-big", 8_000, effective_at=LONG_AGO + timedelta(days=30)),
            ],
            [("new-big", 8_000), ("old-small", 2_000)],
            id="balance_desc-highest-balance-first",
        ),
        pytest.param(
            WENSHAN,
            [
                source("b-new", 6_000, effective_at=LONG_AGO + timedelta(days=1)),
                source("b-old", 6_000, effective_at=LONG_AGO),
            ],
            [("b-old", 6_000), ("b-new", 4_000)],
            id="balance_desc-tie-older-binding-first",
        ),
        pytest.param(
            WENSHAN,
            [source("b2", 6_000), source("b1", 6_000)],
            [("b1", 6_000), ("b2", 4_000)],
            id="balance_desc-full-tie-binding-id",
        ),
        pytest.param(
            WENSHAN,
            [source("limited", 50_000, yearly_limit_fen=1_000), source("plain", 20_000)],
            [("limited", 1_000), ("plain", 9_000)],
            id="balance_desc-orders-by-balance-not-by-what-limits-allow",
        ),
        pytest.param(
            ZIBO,
            [
                source("new-big", 80_000, effective_at=LONG_AGO + timedelta(days=30)),
                source("old-small", 3_000),
            ],
            [("old-small", 3_000), ("new-big", 7_000)],
            id="binding_order-older-first-whatever-balance",
        ),
    ],
)
def test_r7_copay_sources_pay_in_policy_order(policy, sources, expected):
    """R7(b): Wenshan balance_desc (highest balance, ties older binding) or binding_order."""
    plan = compute_plan(make_request((item(amount_fen=10_000),), sources=sources, policy=policy))
    assert_balanced(plan)
    assert paid_by(plan) == expected
    assert plan.copay_fen == 10_000 and plan.cash_fen == 0


def test_r7_own_account_pays_first_then_copay_then_cash():
    """R7(a)(b)(c): own account first, then the owners, the rest cash; balances stay non-negative."""
    plan = compute_plan(
        make_request(
            (item(amount_fen=20_000),),
            own_balance_fen=5_000,
            sources=[source("b1", 4_000), source("b2", 6_000)],
        )
    )
    assert_balanced(plan)
    assert paid_by(plan) == [("own", 5_000), ("b2", 6_000), ("b1", 4_000)]
    assert [p.balance_after_fen for p in plan.payments] == [0, 0, 0]
    assert (plan.own_account_fen, plan.copay_fen, plan.cash_fen) == (5_000, 10_000, 5_000)
    assert codes(plan) == ["INSUFFICIENT_BALANCE", "INSUFFICIENT_BALANCE", "INSUFFICIENT_BALANCE"]
    assert plan.payments[0].kind == "own" and plan.payments[0].binding_id is None


def test_r7_own_account_covering_everything_leaves_owners_untouched():
    """R7(a): when the own account covers the eligible amount no owner pays and nothing needs explaining."""
    plan = compute_plan(make_request(own_balance_fen=50_000, sources=[source("b1", 90_000)]))
    assert paid_by(plan) == [("own", 10_000)]
    assert plan.payments[0].balance_after_fen == 40_000
    assert plan.reasons == ()


def test_r7_own_account_pays_after_copay_when_policy_says_so():
    """R7(a): with own_account_first false the owners pay first and the own account takes the rest."""
    policy = replace(WENSHAN, own_account_first=False)
    plan = compute_plan(make_request(own_balance_fen=50_000, sources=[source("b1", 4_000)], policy=policy))
    assert paid_by(plan) == [("b1", 4_000), ("own", 6_000)]
    assert plan.reasons == ()


def test_r7_zero_balance_sources_are_not_payments():
    """R7: an owner with nothing in the account pays nothing and is not listed as a payment."""
    plan = compute_plan(make_request(sources=[source("empty", 0), source("b2", 3_000)]))
    assert paid_by(plan) == [("b2", 3_000)]
    assert plan.reasons == (
        {"code": "INSUFFICIENT_BALANCE", "kind": "copay", "binding_id": "b2"},
        {"code": "INSUFFICIENT_BALANCE", "kind": "copay", "binding_id": "empty"},
    )


def test_r7_no_binding_means_cash_with_a_reason():
    """R7(c): without own account or binding the eligible amount is cash, explained."""
    plan = compute_plan(make_request())
    assert (plan.cash_fen, plan.payments) == (10_000, ())
    assert codes(plan) == ["NO_ACTIVE_BINDING"]


def test_r7_rebound_owner_account_is_never_spent_twice():
    """R7: two bindings of one owner (unbound, bound again) share one account; its balance bounds both."""
    sources = [
        source("old", 4_000, account_id="acc-x", owner="o1", status_now="active", effective_at=LONG_AGO),
        source("new", 4_000, account_id="acc-x", owner="o1", effective_at=LONG_AGO + timedelta(days=1)),
    ]
    plan = compute_plan(make_request(sources=sources))
    assert plan.copay_fen == 4_000
    assert paid_by(plan) == [("old", 4_000)]


# --------------------------------------------------------------------------- R8 cap


@pytest.mark.parametrize(
    ("cap_used_fen", "certifications", "expected_copay", "expected_codes"),
    [
        pytest.param(0, (), 200_000, ["CAP_REACHED"], id="annual-cap-2000-yuan"),
        pytest.param(150_000, (), 50_000, ["CAP_REACHED"], id="cap-partly-used"),
        pytest.param(200_000, (), 0, ["CAP_REACHED"], id="cap-used-up"),
        pytest.param(250_000, (), 0, ["CAP_REACHED"], id="cap-lowered-below-used"),
        pytest.param(
            0,
            (ChronicCertification(date(2025, 1, 1), date(2025, 12, 31)),),
            300_000,
            [],
            id="chronic-extra-valid",
        ),
        pytest.param(
            0,
            (ChronicCertification(date(2025, 3, 1), date(2025, 3, 1)),),
            300_000,
            [],
            id="chronic-extra-edges-inclusive",
        ),
        pytest.param(
            0,
            (ChronicCertification(date(2024, 1, 1), date(2025, 2, 28)),),
            200_000,
            ["CAP_REACHED"],
            id="chronic-certification-expired",
        ),
        pytest.param(
            0,
            (ChronicCertification(date(2025, 3, 2), date(2025, 12, 31)),),
            200_000,
            ["CAP_REACHED"],
            id="chronic-certification-not-yet-valid",
        ),
    ],
)
def test_r8_copay_never_exceeds_the_annual_cap(cap_used_fen, certifications, expected_copay, expected_codes):
    """R8: co-pay per year ≤ annual cap (+ chronic extra on the service date); the rest is cash."""
    plan = compute_plan(
        make_request(
            (item(amount_fen=300_000),),
            sources=[source("b1", 1_000_000)],
            cap_used_fen=cap_used_fen,
            certifications=certifications,
        )
    )
    assert_balanced(plan)
    assert plan.copay_fen == expected_copay
    assert plan.cap_used_after_fen == cap_used_fen + expected_copay
    assert codes(plan) == expected_codes
    if expected_codes:
        assert plan.reasons[0]["used_fen"] == cap_used_fen
        assert plan.reasons[0]["cap_fen"] == plan.cap_fen == 200_000


def test_r8_cap_spans_several_owners():
    """R8: the cap bounds the sum over all owners, not each owner."""
    plan = compute_plan(
        make_request(
            (item(amount_fen=250_000),),
            sources=[source("b1", 150_000), source("b2", 150_000, effective_at=LONG_AGO + timedelta(days=1))],
            cap_used_fen=20_000,
        )
    )
    assert paid_by(plan) == [("b1", 150_000), ("b2", 30_000)]
    assert plan.cap_used_after_fen == 200_000
    assert codes(plan) == ["INSUFFICIENT_BALANCE", "CAP_REACHED"]


def test_r8_null_cap_means_no_cap():
    """R8: a null annual cap (Zibo) leaves only balances and owner limits."""
    plan = compute_plan(
        make_request((item(amount_fen=900_000),), sources=[source("b1", 1_000_000)], policy=ZIBO)
    )
    assert (plan.copay_fen, plan.cap_fen, plan.cap_used_after_fen) == (900_000, None, 900_000)


def test_r8_own_account_does_not_use_the_cap():
    """R8: own-account payments do not count against the cap."""
    plan = compute_plan(
        make_request(
            (item(amount_fen=400_000),),
            own_balance_fen=300_000,
            sources=[source("b1", 1_000_000)],
            cap_used_fen=150_000,
        )
    )
    assert paid_by(plan) == [("own", 300_000), ("b1", 50_000)]
    assert plan.cap_used_after_fen == 200_000


@pytest.mark.parametrize(
    ("limit_fen", "paid_fen", "expected"),
    [
        pytest.param(5_000, 0, [("b1", 5_000), ("b2", 5_000)], id="limit-below-need"),
        pytest.param(5_000, 3_000, [("b1", 2_000), ("b2", 8_000)], id="limit-partly-used"),
        pytest.param(5_000, 5_000, [("b2", 10_000)], id="limit-used-up"),
        pytest.param(5_000, 9_000, [("b2", 10_000)], id="limit-lowered-below-paid"),
        pytest.param(None, 9_000, [("b1", 10_000)], id="no-owner-limit"),
    ],
)
def test_r8_owner_yearly_limit_bounds_that_owners_payment(limit_fen, paid_fen, expected):
    """R8: an owner-set yearly limit bounds what that binding pays; the next owner continues."""
    sources = [
        source("b1", 100_000, yearly_limit_fen=limit_fen, paid_this_year_fen=paid_fen),
        source("b2", 50_000),
    ]
    plan = compute_plan(make_request(sources=sources))
    assert paid_by(plan) == expected
    assert plan.reasons == ()


def test_r8_owner_limit_reached_is_explained():
    """R8: when the owner limit leaves part of the bill to cash, the reason says so."""
    plan = compute_plan(make_request(sources=[source("b1", 100_000, yearly_limit_fen=4_000)]))
    assert (plan.copay_fen, plan.cash_fen) == (4_000, 6_000)
    assert plan.reasons == ({"code": "OWNER_LIMIT_REACHED", "binding_id": "b1"},)


# --------------------------------------------------------------------------- R6 / R11 bindings


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        pytest.param(
            {"effective_at": SERVICE_TIME + timedelta(seconds=1)},
            {
                "code": "BINDING_NOT_ACTIVE_AT_SERVICE_TIME",
                "binding_id": "b1",
                "effective_at": (SERVICE_TIME + timedelta(seconds=1)).isoformat(),
            },
            id="r6-effective-after-service-never-retroactive",
        ),
        pytest.param(
            {"effective_at": None, "status_now": "pending_review"},
            {"code": "BINDING_NOT_ACTIVE_AT_SERVICE_TIME", "binding_id": "b1", "effective_at": None},
            id="r6-pending-binding",
        ),
        pytest.param(
            {"ended_at": SERVICE_TIME - timedelta(days=1), "status_now": "unbound"},
            {"code": "BINDING_ENDED", "binding_id": "b1", "when": "before_service"},
            id="r6-unbound-before-service",
        ),
        pytest.param(
            {"ended_at": SERVICE_TIME + timedelta(minutes=5), "status_now": "unbound"},
            {"code": "BINDING_ENDED", "binding_id": "b1", "when": "before_settlement"},
            id="r6-unbound-after-service-before-settlement-stops-deduction",
        ),
        pytest.param(
            {"ended_at": SERVICE_TIME + timedelta(minutes=5)},
            {"code": "BINDING_ENDED", "binding_id": "b1", "when": "before_settlement"},
            id="r6-end-recorded-while-status-still-says-active",
        ),
        pytest.param(
            {"suspended_at_service_time": True},
            {"code": "BINDING_SUSPENDED", "binding_id": "b1", "when": "at_service"},
            id="r6-suspended-at-service-time-lifted-since",
        ),
        pytest.param(
            {"status_now": "suspended"},
            {"code": "BINDING_SUSPENDED", "binding_id": "b1", "when": "at_settlement"},
            id="r11-binding-suspended-now",
        ),
        pytest.param(
            {"status_now": "rejected"},
            {"code": "BINDING_NOT_ACTIVE", "binding_id": "b1", "status": "rejected"},
            id="r5-unexpected-status",
        ),
        pytest.param(
            {"owner_suspended": True},
            {"code": "OWNER_SUSPENDED", "binding_id": "b1", "owner_person_id": "owner-b1"},
            id="r11-owner-suspended",
        ),
    ],
)
def test_r6_r11_binding_pays_only_if_active_at_service_and_at_settlement(overrides, reason):
    """R6/R11: a binding not active at service time, or not active now, pays nothing; others still pay."""
    blocked = replace(source("b1", 1_000_000), **overrides)
    plan = compute_plan(make_request((item(amount_fen=10_000),), sources=[blocked, source("b2", 4_000)]))
    assert_balanced(plan)
    assert paid_by(plan) == [("b2", 4_000)]
    assert plan.cash_fen == 6_000
    assert plan.reasons == (reason, {"code": "INSUFFICIENT_BALANCE", "kind": "copay", "binding_id": "b2"})


def test_r6_binding_effective_exactly_at_service_time_pays():
    """R6: effective_at equal to the service time counts as active at service time."""
    plan = compute_plan(make_request(sources=[source("b1", 50_000, effective_at=SERVICE_TIME)]))
    assert paid_by(plan) == [("b1", 10_000)]


def test_r11_suspended_beneficiary_keeps_own_account_but_not_copay():
    """R11/R12: a suspended beneficiary's own account still pays; co-pay pays nothing."""
    plan = compute_plan(
        make_request(own_balance_fen=3_000, sources=[source("b1", 50_000)], beneficiary_suspended=True)
    )
    assert paid_by(plan) == [("own", 3_000)]
    assert plan.cash_fen == 7_000
    assert plan.reasons == (
        {"code": "INSUFFICIENT_BALANCE", "kind": "own"},
        {"code": "BENEFICIARY_SUSPENDED"},
    )


# --------------------------------------------------------------------------- R10 off-site


def filing(prefix: str, valid_from: date = date(2025, 1, 1), valid_to: date = date(2025, 12, 31)):
    return OffsiteFiling(region_prefix=prefix, valid_from=valid_from, valid_to=valid_to)


@pytest.mark.parametrize(
    ("institution_region", "filings", "accounts_pay"),
    [
        pytest.param("532601", (), True, id="same-county"),
        pytest.param("532622", (), True, id="same-prefecture-other-county-needs-no-filing"),
        pytest.param("530102", (), False, id="other-prefecture-no-filing"),
        pytest.param("530102", (filing("53"),), True, id="province-prefix-filing"),
        pytest.param("530102", (filing("5301"),), True, id="prefecture-prefix-filing"),
        pytest.param("530102", (filing("5303"),), False, id="filing-for-another-prefecture"),
        pytest.param("440305", (filing("53"),), False, id="filing-for-another-province"),
        pytest.param(
            "530102", (filing("5301", date(2024, 1, 1), date(2025, 2, 28)),), False, id="expired-filing"
        ),
        pytest.param(
            "530102",
            (filing("5301", date(2025, 3, 2), date(2025, 12, 31)),),
            False,
            id="filing-not-yet-valid",
        ),
        pytest.param(
            "530102", (filing("5301", SERVICE_DATE, SERVICE_DATE),), True, id="filing-edges-inclusive"
        ),
        pytest.param(
            "530102",
            (filing("5301", date(2025, 1, 1), SERVICE_DATE),),
            True,
            id="filing-ends-on-service-date",
        ),
        pytest.param(
            "530102",
            (filing("5303"), filing("5301", date(2024, 1, 1), date(2024, 12, 31)), filing("53")),
            True,
            id="any-covering-filing-suffices",
        ),
    ],
)
def test_r10_offsite_accounts_pay_only_with_a_covering_filing(institution_region, filings, accounts_pay):
    """R10: outside the beneficiary's prefecture, own account and co-pay need a valid covering filing."""
    plan = compute_plan(
        make_request(
            own_balance_fen=4_000,
            sources=[source("b1", 50_000)],
            institution_region=institution_region,
            filings=filings,
        )
    )
    assert_balanced(plan)
    if accounts_pay:
        assert paid_by(plan) == [("own", 4_000), ("b1", 6_000)]
        assert plan.reasons == ()
    else:
        assert (plan.payments, plan.cash_fen, plan.cap_used_after_fen) == ((), 10_000, 0)
        assert plan.reasons == (
            {
                "code": "OFFSITE_NOT_FILED",
                "institution_region": institution_region[:4],
                "beneficiary_region": "5326",
                "amount_fen": 10_000,
            },
        )


def test_r10_r20_filing_dates_are_shanghai_dates():
    """R10/R20: 2025-12-31T16:30Z is 2026-01-01 in Shanghai, after a filing valid to 2025-12-31."""
    service_time = datetime(2025, 12, 31, 16, 30, tzinfo=UTC)
    plan = compute_plan(
        make_request(
            own_balance_fen=50_000,
            institution_region="530102",
            filings=(filing("5301", date(2025, 1, 1), date(2025, 12, 31)),),
            service_time=service_time,
            service_date=date(2026, 1, 1),
            settle_time=service_time + timedelta(minutes=1),
        )
    )
    assert codes(plan) == ["OFFSITE_NOT_FILED"]


def test_r10_offsite_ineligible_only_bill_needs_no_filing_reason():
    """R9/R10: with nothing eligible there is nothing for a filing to unlock; only item reasons."""
    plan = compute_plan(make_request((item("cosmetic"),), institution_region="530102"))
    assert codes(plan) == ["ITEM_NOT_ELIGIBLE"]


# --------------------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    ("items", "field"),
    [
        pytest.param((), "items", id="no-items"),
        pytest.param((item(amount_fen=-1),), "items[0].amount_fen", id="negative"),
        pytest.param((item(), item(amount_fen=True)), "items[1].amount_fen", id="bool-is-not-fen"),
        pytest.param((item(amount_fen=10.5),), "items[0].amount_fen", id="float"),
        pytest.param((item(amount_fen="100"),), "items[0].amount_fen", id="string"),
        pytest.param((item(amount_fen=2**63),), "items[0].amount_fen", id="beyond-bigint"),
        pytest.param((item(in_catalogue="yes"),), "items[0].in_catalogue", id="in-catalogue-not-bool"),
        pytest.param((item(category=""),), "items[0].category", id="empty-category"),
        pytest.param((item(amount_fen=0),), "items", id="zero-total"),
    ],
)
def test_malformed_items_are_rejected(items, field):
    """R9 input: items must be well-formed whole fen with a positive total (VALIDATION_ERROR)."""
    with pytest.raises(ValidationFailed) as caught:
        compute_plan(make_request(items))
    assert caught.value.details["field"] == field
    assert caught.value.status == 400


def test_r20_service_time_after_settlement_is_rejected():
    """R6/R20: a service time in the future of the settlement is a bad request."""
    with pytest.raises(ValidationFailed):
        compute_plan(make_request(settle_time=SERVICE_TIME - timedelta(seconds=1)))


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"service_time": SERVICE_TIME.replace(tzinfo=None)}, id="naive-service-time"),
        pytest.param({"settle_time": SETTLE_TIME.replace(tzinfo=None)}, id="naive-settle-time"),
        pytest.param({"service_date": date(2025, 2, 28)}, id="service-date-not-shanghai-date"),
    ],
)
def test_r20_times_must_be_aware_and_consistent(overrides):
    """R20: naive datetimes and a service date that is not the Shanghai date are programming errors."""
    with pytest.raises(ValueError):
        make_request(**overrides)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: source("b1", -1), id="negative-balance"),
        pytest.param(lambda: source("b1", 1, effective_at=datetime(2025, 1, 1)), id="naive-effective-at"),
        pytest.param(lambda: source("b1", 1, yearly_limit_fen=True), id="bool-limit"),
        pytest.param(lambda: PlanPolicy(200_000, None, "random"), id="unknown-copay-order"),
        pytest.param(lambda: PlanPolicy(-1, None, "balance_desc"), id="negative-cap"),
        pytest.param(lambda: CapState(used_fen=-5), id="negative-cap-used"),
        pytest.param(lambda: OffsiteFiling("532", date(2025, 1, 1), date(2025, 2, 1)), id="3-digit-prefix"),
        pytest.param(lambda: OffsiteFiling("53", date(2025, 2, 1), date(2025, 1, 1)), id="filing-backwards"),
        pytest.param(lambda: make_request(institution_region="5326"), id="short-region-code"),
        pytest.param(
            lambda: make_request(sources=[source("b1", 1, owner=BENEFICIARY)]), id="beneficiary-own-binding"
        ),
        pytest.param(
            lambda: make_request(sources=[source("b1", 1), source("b1", 2)]), id="duplicate-binding"
        ),
        pytest.param(
            lambda: make_request(
                sources=[
                    source("b1", 1, account_id="a", owner="o"),
                    source("b2", 2, account_id="a", owner="o"),
                ]
            ),
            id="one-account-two-balances",
        ),
    ],
)
def test_inconsistent_facts_from_the_service_fail_loudly(build):
    """Facts the service built wrongly are bugs: they raise ValueError/TypeError, never a silent plan."""
    with pytest.raises((ValueError, TypeError)):
        build()


# --------------------------------------------------------------------------- R14 refunds


def settled_parts() -> tuple[list[PaidPart], int]:
    """own 3000, copay b2 5000, copay b1 2000, cash 1000 (11000 paid)."""
    plan = compute_plan(
        make_request(
            (item(amount_fen=10_000), item("cosmetic", 1_000, code="Z")),
            own_balance_fen=3_000,
            sources=[source("b1", 2_000), source("b2", 5_000)],
        )
    )
    assert paid_by(plan) == [("own", 3_000), ("b2", 5_000), ("b1", 2_000)]
    return [PaidPart.from_payment(p) for p in plan.payments], plan.cash_fen


def credited(refund) -> list[tuple[str, int]]:
    return [(c.binding_id or "own", c.amount_fen) for c in refund.credits]


def apply_refund(parts: list[PaidPart], refund) -> list[PaidPart]:
    back = {c.sequence: c.amount_fen for c in refund.credits}
    return [replace(p, refunded_fen=p.refunded_fen + back.get(p.sequence, 0)) for p in parts]


@pytest.mark.parametrize(
    ("amount_fen", "cash", "expected_credits", "cap_restored"),
    [
        pytest.param(500, 500, [], 0, id="small-refund-is-cash-only"),
        pytest.param(1_000, 1_000, [], 0, id="exactly-the-cash"),
        pytest.param(2_500, 1_000, [("b1", 1_500)], 1_500, id="cash-then-last-copay-payer"),
        pytest.param(5_000, 1_000, [("b1", 2_000), ("b2", 2_000)], 4_000, id="into-the-earlier-owner"),
        pytest.param(9_000, 1_000, [("b1", 2_000), ("b2", 5_000), ("own", 1_000)], 7_000, id="own-last"),
        pytest.param(11_000, 1_000, [("b1", 2_000), ("b2", 5_000), ("own", 3_000)], 7_000, id="full-refund"),
    ],
)
def test_r14_refund_goes_back_in_reverse_payment_order(amount_fen, cash, expected_credits, cap_restored):
    """R14: cash first, then co-pay owners from the last payer back, own account last; cap restored (R8)."""
    parts, cash_paid_fen = settled_parts()
    refund = plan_refund(parts, cash_paid_fen, 0, amount_fen)
    assert (refund.amount_fen, refund.cash_fen) == (amount_fen, cash)
    assert credited(refund) == expected_credits
    assert refund.cap_restored_fen == refund.copay_fen == cap_restored
    assert refund.cash_fen + refund.own_account_fen + refund.copay_fen == amount_fen


def test_r14_successive_partial_refunds_continue_where_the_last_stopped():
    """R14: partial refunds add up; each part gives back at most what it paid."""
    parts, cash_paid_fen = settled_parts()
    cash_refunded = 0
    seen = []
    for amount_fen in (1_500, 3_000, 6_500):
        refund = plan_refund(parts, cash_paid_fen, cash_refunded, amount_fen)
        seen.append((refund.cash_fen, credited(refund), refund.cap_restored_fen))
        parts = apply_refund(parts, refund)
        cash_refunded += refund.cash_fen
    assert seen == [
        (1_000, [("b1", 500)], 500),
        (0, [("b1", 1_500), ("b2", 1_500)], 3_000),
        (0, [("b2", 3_500), ("own", 3_000)], 3_500),
    ]
    assert refundable_fen(parts, cash_paid_fen, cash_refunded) == 0
    assert all(p.refunded_fen == p.paid_fen for p in parts)
    with pytest.raises(RefundExceedsPaid):
        plan_refund(parts, cash_paid_fen, cash_refunded, 1)


@pytest.mark.parametrize(
    ("already_cash", "amount_fen", "refundable"),
    [
        pytest.param(0, 11_001, 11_000, id="more-than-paid"),
        pytest.param(1_000, 10_001, 10_000, id="more-than-left-after-refunds"),
    ],
)
def test_r14_refund_beyond_what_is_left_raises(already_cash, amount_fen, refundable):
    """R14: a refund above what is left to refund is REFUND_EXCEEDS_PAID (422)."""
    parts, cash_paid_fen = settled_parts()
    with pytest.raises(RefundExceedsPaid) as caught:
        plan_refund(parts, cash_paid_fen, already_cash, amount_fen)
    assert caught.value.status == 422
    assert caught.value.details == {"requested_fen": amount_fen, "refundable_fen": refundable}


@pytest.mark.parametrize("amount_fen", [0, -100, True, 10.0], ids=["zero", "negative", "bool", "float"])
def test_r14_refund_amount_must_be_positive_fen(amount_fen):
    """R14 input: the refund amount is a positive whole number of fen."""
    parts, cash_paid_fen = settled_parts()
    with pytest.raises(ValidationFailed):
        plan_refund(parts, cash_paid_fen, 0, amount_fen)


def test_r14_paid_parts_are_checked():
    """R14: a part cannot have refunded more than it paid; sequences are distinct."""
    with pytest.raises(ValueError):
        PaidPart("copay", "a", "o", "b", 1, paid_fen=100, refunded_fen=101)
    part = PaidPart("own", "a", "o", None, 1, paid_fen=100)
    with pytest.raises(ValueError):
        plan_refund([part, part], 0, 0, 50)


# --------------------------------------------- issue 8: R20 delay, closed years, R1 owners


def test_r20_a_service_time_older_than_the_policy_delay_is_out_of_range():
    """R20: settlement is real time; backdating a bill (into last year's cap) is refused."""
    settle_time = SERVICE_TIME + timedelta(hours=72, seconds=1)
    with pytest.raises(ServiceTimeOutOfRange) as caught:
        compute_plan(make_request(settle_time=settle_time))
    assert caught.value.status == 422 and caught.value.code == "SERVICE_TIME_OUT_OF_RANGE"
    assert caught.value.details == {"field": "service_time", "why": "too_old", "max_settlement_delay_hours": 72}
    # exactly 72 hours is still in range
    assert compute_plan(make_request(settle_time=SERVICE_TIME + timedelta(hours=72))).copay_fen == 0


def test_r20_the_delay_comes_from_the_policy():
    policy = PlanPolicy(200_000, None, "balance_desc", max_settlement_delay_hours=1)
    with pytest.raises(ServiceTimeOutOfRange):
        compute_plan(make_request(policy=policy, settle_time=SERVICE_TIME + timedelta(minutes=61)))
    compute_plan(make_request(policy=policy, settle_time=SERVICE_TIME + timedelta(minutes=60)))


def test_r20_check_service_time_refuses_the_future_beyond_five_minutes():
    check_service_time(SETTLE_TIME + timedelta(minutes=5), SETTLE_TIME, 72)
    with pytest.raises(ServiceTimeOutOfRange) as caught:
        check_service_time(SETTLE_TIME + timedelta(minutes=5, seconds=1), SETTLE_TIME, 72)
    assert caught.value.details["why"] == "in_future"


@pytest.mark.parametrize(("at", "closed"), [
    (datetime(2026, 1, 15, 15, 59, 59, tzinfo=UTC), False),  # 2026-01-15 23:59:59 in Shanghai
    (datetime(2026, 1, 15, 16, 0, tzinfo=UTC), True),         # 2026-01-16 00:00 in Shanghai
    (datetime(2025, 12, 31, 23, 0, tzinfo=UTC), False),
])
def test_r20_a_year_closes_after_15_january_of_the_next_year_in_shanghai(at, closed):
    assert year_closed(2025, at) is closed
    assert year_closed(2026, at) is False


def test_r20_a_closed_year_pays_no_copay_but_the_own_account_still_pays():
    """R20: with a long delay allowed, a bill of a closed year cannot draw that year's cap."""
    policy = PlanPolicy(200_000, None, "balance_desc", max_settlement_delay_hours=24 * 366)
    settle_time = datetime(2026, 1, 16, 2, 0, tzinfo=UTC)
    plan = compute_plan(make_request((item(amount_fen=30_000),), sources=(source("b1", 100_000),),
                                     own_balance_fen=10_000, policy=policy, settle_time=settle_time))
    assert paid_by(plan) == [("own", 10_000)]
    assert (plan.copay_fen, plan.cash_fen) == (0, 20_000)
    assert {"code": "YEAR_CLOSED", "year": 2025} in plan.reasons
    # the same bill settled on 15 January still draws on the cap
    open_plan = compute_plan(make_request((item(amount_fen=30_000),), sources=(source("b1", 100_000),),
                                          own_balance_fen=10_000, policy=policy,
                                          settle_time=datetime(2026, 1, 15, 2, 0, tzinfo=UTC)))
    assert open_plan.copay_fen == 20_000


@pytest.mark.parametrize("why", ["inactive", "not_employee_insurance", "outside_province"])
def test_r1_r11_an_owner_who_is_no_longer_eligible_pays_nothing_and_the_next_owner_does(why):
    ineligible = replace(source("b1", 100_000), owner_ineligible=why)
    plan = compute_plan(make_request(sources=(ineligible, source("b2", 5_000))))
    assert paid_by(plan) == [("b2", 5_000)]
    assert {"code": "OWNER_NOT_ELIGIBLE", "binding_id": "b1", "owner_person_id": "owner-b1", "why": why} \
        in plan.reasons
    alone = compute_plan(make_request(sources=(ineligible,)))
    assert (alone.copay_fen, alone.cash_fen) == (0, 10_000)
    assert codes(alone) == ["OWNER_NOT_ELIGIBLE"]
