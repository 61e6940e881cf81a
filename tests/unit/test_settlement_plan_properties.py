"""Property tests: the settlement plan and refund split keep the money rules for any input (R6–R11, R14)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from app.errors import RefundExceedsPaid
from app.settlement_plan import (
    ELIGIBLE_CATEGORIES,
    NEVER_ELIGIBLE_CATEGORIES,
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
    compute_plan,
    plan_refund,
    refundable_fen,
)

SERVICE_TIME = datetime(2025, 3, 1, 1, 30, tzinfo=UTC)
SERVICE_DATE = date(2025, 3, 1)
SETTLE_TIME = SERVICE_TIME + timedelta(minutes=10)
BENEFICIARY = "p-ben"

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

# Small pools so that ties, shared limits and exhausted caps actually happen.
fen = st.integers(min_value=0, max_value=400_000) | st.sampled_from([0, 1, 5_000, 200_000])
optional_fen = st.none() | fen
# Caps and owner limits are often small enough to bind.
limit_fen = st.none() | st.sampled_from([0, 10_000, 30_000, 200_000]) | fen
# Balances are small next to bills so that several owners pay, often with equal balances.
balance_fen = st.sampled_from([0, 5_000, 20_000]) | st.integers(min_value=0, max_value=60_000)
# Already-used amounts are mostly small so that caps and owner limits usually leave room to pay.
used_fen = st.sampled_from([0, 0, 0, 10_000]) | fen
rarely = st.sampled_from([False, False, False, False, True])
date_ranges = st.tuples(
    st.sampled_from([date(2024, 1, 1), date(2025, 2, 28), SERVICE_DATE, date(2025, 3, 2)]),
    st.sampled_from([date(2025, 2, 28), SERVICE_DATE, date(2025, 12, 31)]),
).filter(lambda r: r[0] <= r[1])

line_items = st.builds(
    LineItem,
    code=st.sampled_from(["A", "B", "C"]),
    name=st.just("item"),
    category=st.sampled_from(sorted(ELIGIBLE_CATEGORIES))
    | st.sampled_from(["drug", "consultation"])
    | st.sampled_from(sorted(NEVER_ELIGIBLE_CATEGORIES | {"x"})),
    in_catalogue=st.sampled_from([True, True, True, False]),
    amount_fen=fen,
)

policies = st.builds(
    PlanPolicy,
    annual_cap_fen=limit_fen,
    chronic_extra_fen=optional_fen,
    copay_order=st.sampled_from(["balance_desc", "binding_order"]),
    own_account_first=st.booleans(),
)

filings = st.builds(
    lambda prefix, dates: OffsiteFiling(prefix, *dates),
    st.sampled_from(["53", "5301", "5326", "44"]),
    date_ranges,
)

# What can keep a binding from paying (R6, R11), one fact at a time.
binding_defects = st.sampled_from(
    [
        {"effective_at": None, "status_now": "pending_review"},
        {"effective_at": SERVICE_TIME + timedelta(seconds=1)},
        {"ended_at": SERVICE_TIME, "status_now": "unbound"},
        {"ended_at": SERVICE_TIME + timedelta(minutes=5), "status_now": "unbound"},
        {"ended_at": SERVICE_TIME + timedelta(minutes=5)},
        {"suspended_at_service_time": True},
        {"status_now": "suspended"},
        {"owner_suspended": True},
    ]
)


@st.composite
def copay_sources(draw) -> list[CopaySource]:
    count = draw(st.integers(min_value=0, max_value=5) | st.integers(min_value=2, max_value=5))
    sources = []
    for n in range(count):
        owner = f"o{n}"
        source = CopaySource(
            binding_id=f"b{n}",
            owner_person_id=owner,
            account=AccountFacts(f"acc-{owner}", owner, draw(balance_fen)),
            effective_at=SERVICE_TIME - timedelta(days=draw(st.integers(min_value=0, max_value=3))),
            ended_at=None,
            status_now="active",
            suspended_at_service_time=False,
            owner_suspended=False,
            yearly_limit_fen=draw(limit_fen),
            paid_this_year_by_this_binding_fen=draw(used_fen),
        )
        # About half the bindings get a defect, so that both kinds meet in one settlement.
        for defect in draw(st.lists(binding_defects, max_size=2) | st.just([])):
            source = replace(source, **defect)
        if draw(rarely):  # R1/R11 (issue 8): the owner left insurance
            source = replace(source, owner_ineligible="inactive")
        sources.append(source)
    return sources


@st.composite
def plan_requests(draw) -> PlanRequest:
    items = draw(st.lists(line_items, min_size=1, max_size=5))
    assume(sum(i.amount_fen for i in items) > 0)
    own_balance = draw(st.none() | balance_fen)
    return PlanRequest(
        items=items,
        institution=InstitutionFacts(
            "H1",
            draw(st.sampled_from(["hospital", "hospital", "clinic", "pharmacy"])),
            draw(st.sampled_from(["532601", "532601", "532601", "532622", "530102", "440305"])),
            True,
            True,
        ),
        beneficiary=BeneficiaryFacts(
            BENEFICIARY,
            "532621",
            None if own_balance is None else AccountFacts("acc-own", BENEFICIARY, own_balance),
            draw(rarely),
        ),
        sources=draw(copay_sources()),
        cap=CapState(
            used_fen=draw(used_fen),
            chronic_certifications=[
                ChronicCertification(*r) for r in draw(st.lists(date_ranges, max_size=1))
            ],
        ),
        filings=draw(st.lists(filings, max_size=2)),
        policy=draw(policies),
        service_time=SERVICE_TIME,
        service_date=SERVICE_DATE,
        settle_time=SETTLE_TIME,
    )


# The rules restated independently of the implementation, the way SPEC words them.


def usable(source: CopaySource) -> bool:
    """R6/R11: active at the service time and still active at settlement, owner not suspended."""
    return (
        source.effective_at is not None
        and source.effective_at <= SERVICE_TIME
        and source.ended_at is None
        and not source.suspended_at_service_time
        and source.status_now == "active"
        and not source.owner_suspended
        and source.owner_ineligible is None
    )


def eligible(item: LineItem, institution_kind: str) -> bool:
    """R9."""
    if institution_kind == "pharmacy":
        return item.category == "drug" and item.in_catalogue
    return item.category in ELIGIBLE_CATEGORIES and (item.category != "drug" or item.in_catalogue)


def accounts_may_pay(request: PlanRequest) -> bool:
    """R10."""
    region = request.institution.region_code
    return region[:4] == request.beneficiary.region_code[:4] or any(
        region.startswith(f.region_prefix) and f.valid_from <= SERVICE_DATE <= f.valid_to
        for f in request.filings
    )


def expected_cap(request: PlanRequest) -> int | None:
    """R8."""
    if request.policy.annual_cap_fen is None:
        return None
    certified = any(c.valid_from <= SERVICE_DATE <= c.valid_to for c in request.cap.chronic_certifications)
    return request.policy.annual_cap_fen + (request.policy.chronic_extra_fen or 0) * certified


def source_of(request: PlanRequest) -> dict[str, CopaySource]:
    return {s.binding_id: s for s in request.sources}


# --------------------------------------------------------------------------- settlement properties
# Generating a request costs more than planning it, so one generated request is checked against
# every property below instead of generating a fresh batch per property.


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(plan_requests())
def test_every_plan_keeps_the_money_rules(request: PlanRequest):
    """R6–R11, R14: each property below holds for any facts the service can load."""
    plan = compute_plan(request)
    assert_money_is_conserved(request, plan)
    assert_balances_never_go_below_zero(request, plan)
    assert_cap_and_owner_limits_are_never_exceeded(request, plan)
    assert_only_permitted_accounts_pay(request, plan)
    assert_payment_order_follows_the_policy(request, plan)
    assert_eligible_cash_is_explained_and_unavoidable(request, plan)
    assert_a_full_refund_puts_every_fen_back(plan)


def assert_money_is_conserved(request: PlanRequest, plan: Plan) -> None:
    """R7/R9: total = eligible + ineligible = own + copay + cash; eligible = own + copay + its cash."""
    assert plan.total_fen == sum(i.amount_fen for i in request.items)
    assert plan.total_fen == plan.eligible_fen + plan.ineligible_fen
    assert plan.total_fen == plan.own_account_fen + plan.copay_fen + plan.cash_fen
    assert plan.eligible_fen == plan.own_account_fen + plan.copay_fen + plan.eligible_cash_fen
    assert plan.eligible_cash_fen >= 0 and plan.ineligible_fen >= 0
    assert plan.own_account_fen == sum(p.amount_fen for p in plan.payments if p.kind == "own")
    assert plan.copay_fen == sum(p.amount_fen for p in plan.payments if p.kind == "copay")
    assert plan.eligible_fen == sum(
        i.amount_fen for i in request.items if eligible(i, request.institution.kind)
    )
    item_reasons = [r for r in plan.reasons if r["code"] == "ITEM_NOT_ELIGIBLE"]
    assert sum(r["amount_fen"] for r in item_reasons) == plan.ineligible_fen


def assert_balances_never_go_below_zero(request: PlanRequest, plan: Plan) -> None:
    """R7: no account pays more than its balance, across all payments from it."""
    initial = {s.account.account_id: s.account.balance_fen for s in request.sources}
    if request.beneficiary.own_account is not None:
        initial["acc-own"] = request.beneficiary.own_account.balance_fen
    spent: dict[str, int] = defaultdict(int)
    for payment in plan.payments:
        assert payment.amount_fen > 0
        spent[payment.account_id] += payment.amount_fen
        assert payment.balance_after_fen == initial[payment.account_id] - spent[payment.account_id] >= 0


def assert_cap_and_owner_limits_are_never_exceeded(request: PlanRequest, plan: Plan) -> None:
    """R8: co-pay stays within the remaining cap; each binding within its owner's remaining limit."""
    assert plan.cap_fen == expected_cap(request)
    assert plan.cap_used_after_fen == request.cap.used_fen + plan.copay_fen
    if plan.cap_fen is not None:
        assert plan.copay_fen <= max(0, plan.cap_fen - request.cap.used_fen)
        if request.cap.used_fen <= plan.cap_fen:
            assert plan.cap_used_after_fen <= plan.cap_fen
    sources = source_of(request)
    for payment in plan.payments:
        if payment.kind == "copay":
            source = sources[payment.binding_id]
            if source.yearly_limit_fen is not None:
                limit_left = source.yearly_limit_fen - source.paid_this_year_by_this_binding_fen
                assert payment.amount_fen <= limit_left


def assert_only_permitted_accounts_pay(request: PlanRequest, plan: Plan) -> None:
    """R6/R10/R11: only usable bindings pay; no co-pay for a suspended beneficiary; off-site unfiled, none."""
    sources = source_of(request)
    copay = [p for p in plan.payments if p.kind == "copay"]
    if request.beneficiary.suspended:
        assert copay == []
    assert all(usable(sources[p.binding_id]) for p in copay)
    if not accounts_may_pay(request):
        assert plan.payments == ()


def assert_payment_order_follows_the_policy(request: PlanRequest, plan: Plan) -> None:
    """R7: own account first (or last), co-pay by balance_desc or binding_order."""
    kinds = [p.kind for p in plan.payments]
    if "own" in kinds:
        assert kinds.index("own") == (0 if request.policy.own_account_first else len(kinds) - 1)
    assert [p.sequence for p in plan.payments] == list(range(1, len(plan.payments) + 1))

    sources = source_of(request)
    payers = [sources[p.binding_id] for p in plan.payments if p.kind == "copay"]
    if request.policy.copay_order == "balance_desc":
        keys = [(-s.account.balance_fen, s.effective_at, s.binding_id) for s in payers]
    else:
        keys = [(s.effective_at, s.binding_id) for s in payers]
    assert keys == sorted(keys)


def assert_eligible_cash_is_explained_and_unavoidable(request: PlanRequest, plan: Plan) -> None:
    """R7: eligible cash comes with a reason, and only when no permitted account could pay more."""
    if plan.eligible_cash_fen == 0:
        return
    assert any(r["code"] != "ITEM_NOT_ELIGIBLE" for r in plan.reasons)
    if not accounts_may_pay(request):
        return
    paid: dict[str, int] = defaultdict(int)
    for payment in plan.payments:
        paid[payment.account_id] += payment.amount_fen
    own = request.beneficiary.own_account
    if own is not None:
        assert paid[own.account_id] == own.balance_fen
    cap_left = None if plan.cap_fen is None else max(0, plan.cap_fen - request.cap.used_fen) - plan.copay_fen
    if request.beneficiary.suspended or cap_left == 0:
        return
    for source in request.sources:
        if not usable(source):
            continue
        by_binding = sum(p.amount_fen for p in plan.payments if p.binding_id == source.binding_id)
        limit_left = (
            None
            if source.yearly_limit_fen is None
            else max(0, source.yearly_limit_fen - source.paid_this_year_by_this_binding_fen)
        )
        assert paid[source.account.account_id] == source.account.balance_fen or by_binding == limit_left


def assert_a_full_refund_puts_every_fen_back(plan: Plan) -> None:
    """R14/R8: refunding a plan in full credits each account what it paid and restores its cap use."""
    parts = [PaidPart.from_payment(p) for p in plan.payments]
    refund = plan_refund(parts, plan.cash_fen, 0, refundable_fen(parts, plan.cash_fen, 0))
    assert refund.amount_fen == plan.total_fen
    assert refund.cash_fen == plan.cash_fen
    assert refund.cap_restored_fen == plan.copay_fen
    assert {c.sequence: c.amount_fen for c in refund.credits} == {
        p.sequence: p.amount_fen for p in plan.payments
    }


@PROPERTY_SETTINGS
@given(
    st.lists(st.tuples(balance_fen, st.integers(min_value=0, max_value=3)), min_size=1, max_size=5),
    st.sampled_from(["balance_desc", "binding_order"]),
    st.integers(min_value=1, max_value=200_000),
)
def test_r7_active_owners_pay_in_policy_order_until_the_bill_is_paid(owners, copay_order, bill_fen):
    """R7: with only active bindings and no cap, owners pay greedily in policy order (ties included)."""
    sources = [
        CopaySource(
            f"b{n}",
            f"o{n}",
            AccountFacts(f"acc-o{n}", f"o{n}", balance),
            SERVICE_TIME - timedelta(days=age),
            None,
            "active",
            False,
            False,
            None,
            0,
        )
        for n, (balance, age) in enumerate(owners)
    ]
    policy = PlanPolicy(None, None, copay_order)
    request = PlanRequest(
        items=[LineItem("D", "drug", "drug", True, bill_fen)],
        institution=InstitutionFacts("H1", "hospital", "532601", True, True),
        beneficiary=BeneficiaryFacts(BENEFICIARY, "532621", None, False),
        sources=sources,
        cap=CapState(0),
        filings=(),
        policy=policy,
        service_time=SERVICE_TIME,
        service_date=SERVICE_DATE,
        settle_time=SETTLE_TIME,
    )
    plan = compute_plan(request)
    assert_payment_order_follows_the_policy(request, plan)

    if copay_order == "balance_desc":
        expected_order = sorted(sources, key=lambda s: (-s.account.balance_fen, s.effective_at, s.binding_id))
    else:
        expected_order = sorted(sources, key=lambda s: (s.effective_at, s.binding_id))
    expected, left = [], bill_fen
    for source in expected_order:
        amount = min(left, source.account.balance_fen)
        if amount:
            expected.append((source.binding_id, amount))
        left -= amount
    assert [(p.binding_id, p.amount_fen) for p in plan.payments] == expected
    assert plan.cash_fen == left


# --------------------------------------------------------------------------- refund properties


@st.composite
def settlements(draw) -> tuple[list[PaidPart], int]:
    parts = []
    if draw(st.booleans()):
        parts.append(PaidPart("own", "acc-own", BENEFICIARY, None, 1, draw(st.integers(1, 50_000))))
    for n in range(draw(st.integers(0, 4))):
        parts.append(
            PaidPart("copay", f"acc-o{n}", f"o{n}", f"b{n}", len(parts) + 1, draw(st.integers(1, 50_000)))
        )
    cash_paid = draw(st.integers(0, 50_000))
    assume(cash_paid + sum(p.paid_fen for p in parts) > 0)
    return parts, cash_paid


@PROPERTY_SETTINGS
@given(settlements(), st.lists(st.integers(min_value=1, max_value=60_000), max_size=6))
def test_r14_successive_refunds_never_exceed_paid_and_restore_exactly(settlement, requested):
    """R14: any sequence of partial refunds stays within what was paid, goes back in reverse order,
    restores each account exactly once fully refunded, and gives back the cap by the co-pay part (R8)."""
    parts, cash_paid = settlement
    cash_refunded = 0
    credited: dict[int, int] = defaultdict(int)
    cap_restored = 0
    for amount in [*requested, None]:
        left = refundable_fen(parts, cash_paid, cash_refunded)
        if left == 0:
            break
        if amount is not None and amount > left:
            with pytest.raises(RefundExceedsPaid):
                plan_refund(parts, cash_paid, cash_refunded, amount)
            continue
        refund = plan_refund(parts, cash_paid, cash_refunded, left if amount is None else amount)

        assert refund.cash_fen + refund.own_account_fen + refund.copay_fen == refund.amount_fen
        assert refund.cap_restored_fen == refund.copay_fen
        assert refund.copay_fen == sum(c.amount_fen for c in refund.credits if c.kind == "copay")
        if refund.credits:
            assert cash_refunded + refund.cash_fen == cash_paid  # cash goes back before any account
        sequences = [c.sequence for c in refund.credits]
        assert sequences == sorted(sequences, reverse=True)

        back = {c.sequence: c.amount_fen for c in refund.credits}
        for part in parts:
            if back.get(part.sequence) and part.sequence != min(back):
                assert part.refunded_fen + back[part.sequence] == part.paid_fen  # later payers emptied first
        parts = [replace(p, refunded_fen=p.refunded_fen + back.get(p.sequence, 0)) for p in parts]
        cash_refunded += refund.cash_fen
        cap_restored += refund.cap_restored_fen
        for sequence, amount_back in back.items():
            credited[sequence] += amount_back

    assert refundable_fen(parts, cash_paid, cash_refunded) == 0
    assert cash_refunded == cash_paid
    for part in parts:
        assert credited[part.sequence] == part.paid_fen == part.refunded_fen
    assert cap_restored == sum(p.paid_fen for p in parts if p.kind == "copay")
