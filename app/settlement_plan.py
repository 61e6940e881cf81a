"""Pure settlement calculation and refund split (SPEC R6–R11, R14; ARCHITECTURE step 3).

``compute_plan`` turns the facts a settlement service has loaded and locked (line items, the
institution, the beneficiary's own account, every binding that could pay, the annual-cap state,
off-site filings, the region policy) into a ``Plan``: who pays how many fen, in which order,
and why every fen of the eligible amount that no account paid fell to cash.
``plan_refund`` splits a (partial) refund back over what a settlement paid.

Nothing here touches Flask, the database or the clock: every time comes in as an argument.
Money is integer fen throughout (STYLE §8). Facts built by the service are checked when the
dataclasses are constructed and a broken one raises ``ValueError`` or ``TypeError`` (a bug,
not a client error); what the institution sent (line items, service time, refund amount)
raises the ``DomainError`` the API contract names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Literal

from app.errors import InstitutionNotDesignated, RefundExceedsPaid, ServiceTimeOutOfRange, ValidationFailed

__all__ = [
    "ELIGIBLE_CATEGORIES",
    "NEVER_ELIGIBLE_CATEGORIES",
    "AccountFacts",
    "BeneficiaryFacts",
    "CapState",
    "ChronicCertification",
    "CopaySource",
    "InstitutionFacts",
    "LineItem",
    "OffsiteFiling",
    "PaidPart",
    "Payment",
    "Plan",
    "PlanPolicy",
    "PlanRequest",
    "RefundCredit",
    "RefundPlan",
    "check_service_time",
    "compute_plan",
    "plan_refund",
    "refundable_fen",
    "year_closed",
]

CopayOrder = Literal["balance_desc", "binding_order"]
InstitutionKind = Literal["hospital", "clinic", "pharmacy"]
PaymentKind = Literal["own", "copay"]
Reason = dict[str, Any]

# R9
ELIGIBLE_CATEGORIES = frozenset(
    {"drug", "consultation", "examination", "treatment", "tcm_treatment", "medical_consumable"}
)
NEVER_ELIGIBLE_CATEGORIES = frozenset({"public_health", "fitness", "cosmetic", "daily_goods", "other"})

# Storage is BIGINT; a sum beyond it is a malformed request, not a large bill.
MAX_FEN = 2**63 - 1

# China has had no daylight saving time since 1991, so a fixed +08:00 offset gives the exact
# Asia/Shanghai calendar date without depending on a tz database being installed.
_SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")

# R20: an institution's clock may run a little ahead of ours; a service time further ahead is refused.
SERVICE_TIME_FUTURE_SKEW = timedelta(minutes=5)
# R20: the books of calendar year Y close at the end of 15 January of Y + 1 (Asia/Shanghai); after
# that a bill of year Y cannot draw on Y's annual cap.
BOOKS_CLOSE_MONTH_DAY = (1, 15)

_COPAY_ORDERS = ("balance_desc", "binding_order")
_INSTITUTION_KINDS = ("hospital", "clinic", "pharmacy")


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class PlanPolicy:
    """The parts of a region policy (SPEC §4) a settlement needs; built by the service."""

    annual_cap_fen: int | None
    chronic_extra_fen: int | None
    copay_order: CopayOrder
    own_account_first: bool = True
    max_settlement_delay_hours: int = 72  # R20

    def __post_init__(self) -> None:
        _check_optional_fen(self.annual_cap_fen, "annual_cap_fen")
        _check_optional_fen(self.chronic_extra_fen, "chronic_extra_fen")
        if self.copay_order not in _COPAY_ORDERS:
            raise ValueError(f"copay_order must be one of {_COPAY_ORDERS}, got {self.copay_order!r}")
        _check_bool(self.own_account_first, "own_account_first")
        delay = self.max_settlement_delay_hours
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 1:
            raise ValueError(f"max_settlement_delay_hours must be a positive integer, got {delay!r}")


@dataclass(frozen=True)
class LineItem:
    """One line of the bill as the institution sent it (personal-burden part, R9).

    Not checked on construction: ``compute_plan`` validates items so that the error can
    name the offending line.
    """

    code: str
    name: str
    category: str
    in_catalogue: bool
    amount_fen: int


@dataclass(frozen=True)
class InstitutionFacts:
    """The settling institution as the registry knows it."""

    code: str
    kind: InstitutionKind
    region_code: str
    designated: bool
    active: bool

    def __post_init__(self) -> None:
        if self.kind not in _INSTITUTION_KINDS:
            raise ValueError(f"institution kind must be one of {_INSTITUTION_KINDS}, got {self.kind!r}")
        _check_region_code(self.region_code, "institution region_code")
        _check_bool(self.designated, "designated")
        _check_bool(self.active, "active")


@dataclass(frozen=True)
class AccountFacts:
    """A personal account (个人账户) and its balance, read under a row lock."""

    account_id: str
    owner_person_id: str
    balance_fen: int

    def __post_init__(self) -> None:
        _check_fen(self.balance_fen, f"balance_fen of account {self.account_id}")


@dataclass(frozen=True)
class BeneficiaryFacts:
    """The person being treated; ``suspended`` is a staff suspension of the beneficiary (R11)."""

    person_id: str
    region_code: str
    own_account: AccountFacts | None
    suspended: bool

    def __post_init__(self) -> None:
        _check_region_code(self.region_code, "beneficiary region_code")
        _check_bool(self.suspended, "suspended")
        if self.own_account is not None and self.own_account.owner_person_id != self.person_id:
            raise ValueError("the beneficiary's own account belongs to someone else")


@dataclass(frozen=True)
class CopaySource:
    """One binding between an owner and the beneficiary, with the owner's account.

    ``effective_at`` is when the binding became active (None if it never did);
    ``suspended_at_service_time`` is true when the binding or its owner was suspended at the
    service time; ``status_now`` and ``owner_suspended`` describe the settlement time.
    ``yearly_limit_fen`` is the owner-set limit (R8) and ``paid_this_year_by_this_binding_fen``
    what this binding already paid in the service year.
    """

    binding_id: str
    owner_person_id: str
    account: AccountFacts
    effective_at: datetime | None
    ended_at: datetime | None
    status_now: str
    suspended_at_service_time: bool
    owner_suspended: bool
    yearly_limit_fen: int | None
    paid_this_year_by_this_binding_fen: int
    # R1/R11: why the owner is no longer an active eligible owner (registry status, insurance type,
    # province — ``policy.owner_ineligibility``), or None. Such an owner pays nothing.
    owner_ineligible: str | None = None

    def __post_init__(self) -> None:
        if self.owner_ineligible is not None and not isinstance(self.owner_ineligible, str):
            raise TypeError("owner_ineligible must be a reason (text) or None")
        if self.account.owner_person_id != self.owner_person_id:
            raise ValueError(f"binding {self.binding_id}: the account does not belong to the owner")
        if self.effective_at is not None:
            _check_aware(self.effective_at, "effective_at")
        if self.ended_at is not None:
            _check_aware(self.ended_at, "ended_at")
        _check_bool(self.suspended_at_service_time, "suspended_at_service_time")
        _check_bool(self.owner_suspended, "owner_suspended")
        _check_optional_fen(self.yearly_limit_fen, "yearly_limit_fen")
        _check_fen(self.paid_this_year_by_this_binding_fen, "paid_this_year_by_this_binding_fen")


@dataclass(frozen=True)
class ChronicCertification:
    """A chronic-disease certification of the beneficiary; dates are inclusive (R20)."""

    valid_from: date
    valid_to: date

    def __post_init__(self) -> None:
        _check_date_range(self.valid_from, self.valid_to)


@dataclass(frozen=True)
class CapState:
    """The beneficiary's annual-cap row for the service year (R8).

    ``used_fen`` is the co-pay already counted this year. The cap itself is computed here from
    the policy and the certifications, so the chronic-extra rule is tested with the rest.
    """

    used_fen: int
    chronic_certifications: tuple[ChronicCertification, ...] = ()

    def __post_init__(self) -> None:
        _check_fen(self.used_fen, "cap used_fen")
        object.__setattr__(self, "chronic_certifications", tuple(self.chronic_certifications))


@dataclass(frozen=True)
class OffsiteFiling:
    """An off-site treatment filing (异地就医备案) of the beneficiary (R10)."""

    region_prefix: str
    valid_from: date
    valid_to: date

    def __post_init__(self) -> None:
        prefix = self.region_prefix
        if not (isinstance(prefix, str) and len(prefix) in (2, 4) and prefix.isascii() and prefix.isdigit()):
            raise ValueError(f"filing region_prefix must be 2 or 4 digits, got {prefix!r}")
        _check_date_range(self.valid_from, self.valid_to)

    def covers(self, region_code: str, day: date) -> bool:
        """True when the filing is valid on ``day`` (inclusive) for an institution in ``region_code``."""
        return region_code.startswith(self.region_prefix) and self.valid_from <= day <= self.valid_to


@dataclass(frozen=True)
class PlanRequest:
    """Everything ``compute_plan`` needs. Sequences are stored as tuples.

    ``service_date`` is the Asia/Shanghai date of ``service_time``; ``settle_time`` is now.
    """

    items: tuple[LineItem, ...]
    institution: InstitutionFacts
    beneficiary: BeneficiaryFacts
    sources: tuple[CopaySource, ...]
    cap: CapState
    filings: tuple[OffsiteFiling, ...]
    policy: PlanPolicy
    service_time: datetime
    service_date: date
    settle_time: datetime

    def __post_init__(self) -> None:
        for name in ("items", "sources", "filings"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _check_aware(self.service_time, "service_time")
        _check_aware(self.settle_time, "settle_time")
        if self.service_time.astimezone(_SHANGHAI).date() != self.service_date:
            raise ValueError("service_date is not the Asia/Shanghai date of service_time")
        _check_sources(self.sources, self.beneficiary)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Payment:
    """One deduction from one account; ``sequence`` is its 1-based place in the payment order."""

    kind: PaymentKind
    account_id: str
    owner_person_id: str
    binding_id: str | None
    amount_fen: int
    sequence: int
    balance_after_fen: int


@dataclass(frozen=True)
class Plan:
    """How a settlement is paid.

    ``total_fen = eligible_fen + ineligible_fen = own_account_fen + copay_fen + cash_fen``.
    ``reasons`` explain every fen that went to cash: one entry per ineligible item, then why
    the eligible remainder (``eligible_cash_fen``) was not paid by an account.
    """

    total_fen: int
    eligible_fen: int
    ineligible_fen: int
    own_account_fen: int
    copay_fen: int
    cash_fen: int
    payments: tuple[Payment, ...]
    cap_fen: int | None
    cap_used_after_fen: int
    reasons: tuple[Reason, ...]

    @property
    def eligible_cash_fen(self) -> int:
        """The part of the eligible amount paid in cash."""
        return self.eligible_fen - self.own_account_fen - self.copay_fen


# --------------------------------------------------------------------------- settlement


def compute_plan(request: PlanRequest) -> Plan:
    """Split a settlement into own-account, co-pay and cash parts (R6–R11).

    Raises ``ValidationFailed`` for malformed line items or a service time after the
    settlement, and ``InstitutionNotDesignated`` for an institution that may not settle (R9).
    """
    _validate_items(request.items)
    if request.service_time > request.settle_time:
        raise ValidationFailed(
            "The service time is after the settlement time.",
            details={"field": "service_time", "why": "after_settlement_time"},
        )
    check_service_time(request.service_time, request.settle_time, request.policy.max_settlement_delay_hours)
    institution = request.institution
    if not (institution.designated and institution.active):
        raise InstitutionNotDesignated(details={"institution": institution.code})

    total_fen = sum(item.amount_fen for item in request.items)
    eligible_fen, item_reasons = _eligible_amount(request.items, institution.kind)
    cap_fen = _effective_cap(request.policy, request.cap, request.service_date)
    ledger = _Ledger(eligible_fen, cap_fen, request.cap.used_fen)

    shortfalls: list[Reason] = []
    if eligible_fen and not _offsite_allowed(request):
        shortfalls.append(_offsite_reason(request, eligible_fen))
    else:
        own = request.beneficiary.own_account
        if own is not None and request.policy.own_account_first:
            shortfalls += _pay_from_own_account(ledger, own)
        shortfalls += _pay_from_copay_sources(ledger, request)
        if own is not None and not request.policy.own_account_first:
            shortfalls += _pay_from_own_account(ledger, own)

    own_account_fen = sum(p.amount_fen for p in ledger.payments if p.kind == "own")
    copay_fen = sum(p.amount_fen for p in ledger.payments if p.kind == "copay")
    return Plan(
        total_fen=total_fen,
        eligible_fen=eligible_fen,
        ineligible_fen=total_fen - eligible_fen,
        own_account_fen=own_account_fen,
        copay_fen=copay_fen,
        cash_fen=total_fen - own_account_fen - copay_fen,
        payments=tuple(ledger.payments),
        cap_fen=cap_fen,
        cap_used_after_fen=request.cap.used_fen + copay_fen,
        # A payer's shortfall only matters when someone after it did not make up for it.
        reasons=tuple(item_reasons + (shortfalls if ledger.remaining_fen else [])),
    )


def check_service_time(service_time: datetime, settle_time: datetime, max_delay_hours: int) -> None:
    """R20: settlement is real time at the counter. A service time more than ``max_delay_hours``
    before the settlement, or more than ``SERVICE_TIME_FUTURE_SKEW`` after it, is
    ``SERVICE_TIME_OUT_OF_RANGE`` — so no bill can be backdated into an earlier year's cap."""
    _check_aware(service_time, "service_time")
    _check_aware(settle_time, "settle_time")
    if service_time > settle_time + SERVICE_TIME_FUTURE_SKEW:
        raise ServiceTimeOutOfRange(
            "The service time is in the future.",
            details={"field": "service_time", "why": "in_future",
                     "max_skew_seconds": int(SERVICE_TIME_FUTURE_SKEW.total_seconds())},
        )
    if service_time < settle_time - timedelta(hours=max_delay_hours):
        raise ServiceTimeOutOfRange(
            f"The service time is more than {max_delay_hours} hours ago.",
            details={"field": "service_time", "why": "too_old", "max_settlement_delay_hours": max_delay_hours},
        )


def year_closed(year: int, at: datetime) -> bool:
    """R20: are the books of calendar ``year`` closed at ``at`` (after 15 January of the next year,
    Asia/Shanghai)? A closed year's annual cap cannot be drawn on; refunds still give it back."""
    _check_aware(at, "at")
    month, day = BOOKS_CLOSE_MONTH_DAY
    return at.astimezone(_SHANGHAI).date() > date(year + 1, month, day)


def _eligible_amount(items: Sequence[LineItem], institution_kind: str) -> tuple[int, list[Reason]]:
    """R9: sum the eligible lines; every ineligible line with an amount becomes a reason."""
    eligible_fen = 0
    reasons: list[Reason] = []
    for line, item in enumerate(items):
        why = _why_not_eligible(item, institution_kind)
        if why is None:
            eligible_fen += item.amount_fen
        elif item.amount_fen:
            reasons.append(
                {
                    "code": "ITEM_NOT_ELIGIBLE",
                    "line": line,
                    "item": item.code,
                    "category": item.category,
                    "amount_fen": item.amount_fen,
                    "why": why,
                }
            )
    return eligible_fen, reasons


def _why_not_eligible(item: LineItem, institution_kind: str) -> str | None:
    if item.category == "drug" and not item.in_catalogue:
        return "drug_not_in_catalogue"
    if institution_kind == "pharmacy" and item.category != "drug":
        return "pharmacy_only_catalogue_drugs"
    if item.category in ELIGIBLE_CATEGORIES:
        return None
    if item.category in NEVER_ELIGIBLE_CATEGORIES:
        return "category_not_covered"
    return "unknown_category"


def _offsite_allowed(request: PlanRequest) -> bool:
    """R10: accounts pay off-site only under a filing valid on the service date for that region."""
    institution_region = request.institution.region_code
    if institution_region[:4] == request.beneficiary.region_code[:4]:
        return True
    return any(f.covers(institution_region, request.service_date) for f in request.filings)


def _offsite_reason(request: PlanRequest, eligible_fen: int) -> Reason:
    return {
        "code": "OFFSITE_NOT_FILED",
        "institution_region": request.institution.region_code[:4],
        "beneficiary_region": request.beneficiary.region_code[:4],
        "amount_fen": eligible_fen,
    }


def _effective_cap(policy: PlanPolicy, cap: CapState, service_date: date) -> int | None:
    """R8: the annual cap, plus the chronic extra when a certification is valid on the service date."""
    if policy.annual_cap_fen is None:
        return None
    certified = any(c.valid_from <= service_date <= c.valid_to for c in cap.chronic_certifications)
    extra_fen = policy.chronic_extra_fen or 0
    return policy.annual_cap_fen + (extra_fen if certified else 0)


class _Ledger:
    """What is still to pay, what the cap still allows and what each account has left."""

    def __init__(self, eligible_fen: int, cap_fen: int | None, cap_used_fen: int) -> None:
        self.remaining_fen = eligible_fen
        self.cap_fen = cap_fen
        self.cap_used_fen = cap_used_fen
        # A cap lowered below what was already used allows nothing more, never a negative amount.
        self.cap_left_fen = None if cap_fen is None else max(0, cap_fen - cap_used_fen)
        self.payments: list[Payment] = []
        self._balances: dict[str, int] = {}

    def balance_left(self, account: AccountFacts) -> int:
        # Keyed by account: an owner who unbound and bound again has two bindings on one account.
        return self._balances.setdefault(account.account_id, account.balance_fen)

    def pay(self, kind: PaymentKind, account: AccountFacts, binding_id: str | None, amount_fen: int) -> None:
        if amount_fen == 0:
            return
        balance_after_fen = self.balance_left(account) - amount_fen
        self._balances[account.account_id] = balance_after_fen
        self.remaining_fen -= amount_fen
        if kind == "copay" and self.cap_left_fen is not None:
            self.cap_left_fen -= amount_fen
        self.payments.append(
            Payment(
                kind=kind,
                account_id=account.account_id,
                owner_person_id=account.owner_person_id,
                binding_id=binding_id,
                amount_fen=amount_fen,
                sequence=len(self.payments) + 1,
                balance_after_fen=balance_after_fen,
            )
        )


def _pay_from_own_account(ledger: _Ledger, account: AccountFacts) -> list[Reason]:
    """R7(a): the beneficiary's own account; it does not count against the cap (R8)."""
    if ledger.remaining_fen == 0:
        return []
    ledger.pay("own", account, None, min(ledger.balance_left(account), ledger.remaining_fen))
    return [{"code": "INSUFFICIENT_BALANCE", "kind": "own"}] if ledger.remaining_fen else []


def _pay_from_copay_sources(ledger: _Ledger, request: PlanRequest) -> list[Reason]:
    """R7(b): owners' accounts in policy order, each bounded by balance, cap and owner limit."""
    if ledger.remaining_fen == 0:
        return []
    # R11 + R12: a suspended beneficiary keeps own account and cash; only co-pay stops.
    if request.beneficiary.suspended:
        return [{"code": "BENEFICIARY_SUSPENDED"}]
    if not request.sources:
        return [{"code": "NO_ACTIVE_BINDING"}]
    # R20: a closed year's cap cannot be drawn on any more (own account and cash still work).
    if year_closed(request.service_date.year, request.settle_time):
        return [{"code": "YEAR_CLOSED", "year": request.service_date.year}]

    usable, reasons = _usable_sources(request)
    for source in _in_copay_order(usable, request.policy.copay_order):
        if ledger.remaining_fen == 0 or ledger.cap_left_fen == 0:
            break
        limit_left_fen = _owner_limit_left(source)
        amount_fen = min(
            ledger.balance_left(source.account),
            ledger.remaining_fen,
            MAX_FEN if ledger.cap_left_fen is None else ledger.cap_left_fen,
            MAX_FEN if limit_left_fen is None else limit_left_fen,
        )
        ledger.pay("copay", source.account, source.binding_id, amount_fen)
        if ledger.remaining_fen == 0 or ledger.cap_left_fen == 0:
            continue  # nothing to explain, or the cap explains it below
        if amount_fen == limit_left_fen:
            reasons.append({"code": "OWNER_LIMIT_REACHED", "binding_id": source.binding_id})
        else:
            reasons.append({"code": "INSUFFICIENT_BALANCE", "kind": "copay", "binding_id": source.binding_id})
    if usable and ledger.remaining_fen and ledger.cap_left_fen == 0:
        reasons.append({"code": "CAP_REACHED", "cap_fen": ledger.cap_fen, "used_fen": ledger.cap_used_fen})
    return reasons


def _usable_sources(request: PlanRequest) -> tuple[list[CopaySource], list[Reason]]:
    """The bindings that may pay now, and a reason for each one that may not."""
    usable: list[CopaySource] = []
    reasons: list[Reason] = []
    for source in request.sources:
        blocked = _why_source_blocked(source, request.service_time)
        if blocked is None:
            usable.append(source)
        else:
            reasons.append(blocked)
    return usable, reasons


def _why_source_blocked(source: CopaySource, service_time: datetime) -> Reason | None:
    """R6 and R11: the binding must be active at the service time and still active now
    (``status_now``, ``ended_at`` and ``owner_suspended`` describe the settlement time)."""
    binding_id = source.binding_id
    if source.effective_at is None or source.effective_at > service_time:
        # R6: never retroactive, even if the binding is active today.
        return {
            "code": "BINDING_NOT_ACTIVE_AT_SERVICE_TIME",
            "binding_id": binding_id,
            "effective_at": None if source.effective_at is None else source.effective_at.isoformat(),
        }
    if source.ended_at is not None and source.ended_at <= service_time:
        return {"code": "BINDING_ENDED", "binding_id": binding_id, "when": "before_service"}
    if source.suspended_at_service_time:
        return {"code": "BINDING_SUSPENDED", "binding_id": binding_id, "when": "at_service"}
    # R6: an unbinding or suspension after the service still stops the deduction.
    if source.ended_at is not None or source.status_now == "unbound":
        return {"code": "BINDING_ENDED", "binding_id": binding_id, "when": "before_settlement"}
    if source.status_now == "suspended":
        return {"code": "BINDING_SUSPENDED", "binding_id": binding_id, "when": "at_settlement"}
    if source.status_now != "active":
        return {"code": "BINDING_NOT_ACTIVE", "binding_id": binding_id, "status": source.status_now}
    if source.owner_ineligible is not None:
        # R1 + R11: an owner who left insurance, died, moved out of the province… pays nothing.
        return {
            "code": "OWNER_NOT_ELIGIBLE",
            "binding_id": binding_id,
            "owner_person_id": source.owner_person_id,
            "why": source.owner_ineligible,
        }
    if source.owner_suspended:
        return {
            "code": "OWNER_SUSPENDED",
            "binding_id": binding_id,
            "owner_person_id": source.owner_person_id,
        }
    return None


def _in_copay_order(sources: Iterable[CopaySource], copay_order: CopayOrder) -> list[CopaySource]:
    """R7(b): ``balance_desc`` is highest balance first (whatever limits apply), ties older binding
    first; ``binding_order`` is older binding first. The binding id breaks remaining ties."""

    def seniority(source: CopaySource) -> tuple[datetime, str]:
        assert source.effective_at is not None  # usable sources became active
        return source.effective_at, source.binding_id

    if copay_order == "balance_desc":
        return sorted(sources, key=lambda s: (-s.account.balance_fen, *seniority(s)))
    return sorted(sources, key=seniority)


def _owner_limit_left(source: CopaySource) -> int | None:
    """R8: what the owner's own yearly limit for this binding still allows (None: no limit)."""
    if source.yearly_limit_fen is None:
        return None
    return max(0, source.yearly_limit_fen - source.paid_this_year_by_this_binding_fen)


# --------------------------------------------------------------------------- refunds


@dataclass(frozen=True)
class PaidPart:
    """One payment of a settlement as stored, with what earlier refunds already returned."""

    kind: PaymentKind
    account_id: str
    owner_person_id: str
    binding_id: str | None
    sequence: int
    paid_fen: int
    refunded_fen: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("own", "copay"):
            raise ValueError(f"paid part kind must be 'own' or 'copay', got {self.kind!r}")
        if not (_is_int(self.sequence) and self.sequence >= 1):
            raise ValueError(f"sequence must be a positive int, got {self.sequence!r}")
        _check_fen(self.paid_fen, "paid_fen")
        _check_fen(self.refunded_fen, "refunded_fen")
        if self.refunded_fen > self.paid_fen:
            raise ValueError(f"part {self.sequence} refunded more than it paid")

    @classmethod
    def from_payment(cls, payment: Payment, refunded_fen: int = 0) -> PaidPart:
        """The part a planned payment became once settled."""
        return cls(
            kind=payment.kind,
            account_id=payment.account_id,
            owner_person_id=payment.owner_person_id,
            binding_id=payment.binding_id,
            sequence=payment.sequence,
            paid_fen=payment.amount_fen,
            refunded_fen=refunded_fen,
        )

    @property
    def refundable_fen(self) -> int:
        return self.paid_fen - self.refunded_fen


@dataclass(frozen=True)
class RefundCredit:
    """Money going back to one account; ``sequence`` names the part it reverses."""

    kind: PaymentKind
    account_id: str
    owner_person_id: str
    binding_id: str | None
    sequence: int
    amount_fen: int


@dataclass(frozen=True)
class RefundPlan:
    """How one refund is split: ``amount_fen = cash_fen + own_account_fen + copay_fen``.

    ``cap_restored_fen`` equals ``copay_fen`` (R8: refunds give the cap back); the service
    restores it on the cap row of the settlement's service year.
    """

    amount_fen: int
    cash_fen: int
    own_account_fen: int
    copay_fen: int
    credits: tuple[RefundCredit, ...]
    cap_restored_fen: int


def refundable_fen(payments_made: Sequence[PaidPart], cash_paid_fen: int, cash_refunded_fen: int) -> int:
    """What is still left to refund on a settlement (a full refund asks for exactly this)."""
    _check_cash(cash_paid_fen, cash_refunded_fen)
    return cash_paid_fen - cash_refunded_fen + sum(part.refundable_fen for part in payments_made)


def plan_refund(
    payments_made: Sequence[PaidPart],
    cash_paid_fen: int,
    cash_refunded_fen: int,
    amount_fen: int,
) -> RefundPlan:
    """Split a refund of ``amount_fen`` back in reverse payment order (R14).

    Cash goes back first, then the accounts from the last payer back to the first (with the
    default order: last co-pay owner … first co-pay owner, own account last). Each part gives
    back at most what it paid less what earlier refunds returned, so successive partial
    refunds work when the caller passes each part's ``refunded_fen`` so far.
    Raises ``ValidationFailed`` for a non-positive amount and ``RefundExceedsPaid`` for more
    than is left.
    """
    if not (_is_int(amount_fen) and amount_fen > 0):
        raise ValidationFailed(
            "The refund amount must be a positive number of fen.",
            details={"field": "amount_fen", "why": "not_positive_int"},
        )
    sequences = [part.sequence for part in payments_made]
    if len(set(sequences)) != len(sequences):
        raise ValueError("paid parts must have distinct sequences")
    left_fen = refundable_fen(payments_made, cash_paid_fen, cash_refunded_fen)
    if amount_fen > left_fen:
        raise RefundExceedsPaid(details={"requested_fen": amount_fen, "refundable_fen": left_fen})

    to_go_fen = amount_fen
    cash_fen = min(to_go_fen, cash_paid_fen - cash_refunded_fen)
    to_go_fen -= cash_fen
    credits: list[RefundCredit] = []
    for part in sorted(payments_made, key=lambda p: p.sequence, reverse=True):
        back_fen = min(to_go_fen, part.refundable_fen)
        if back_fen == 0:
            continue
        credits.append(
            RefundCredit(
                kind=part.kind,
                account_id=part.account_id,
                owner_person_id=part.owner_person_id,
                binding_id=part.binding_id,
                sequence=part.sequence,
                amount_fen=back_fen,
            )
        )
        to_go_fen -= back_fen

    copay_fen = sum(c.amount_fen for c in credits if c.kind == "copay")
    return RefundPlan(
        amount_fen=amount_fen,
        cash_fen=cash_fen,
        own_account_fen=sum(c.amount_fen for c in credits if c.kind == "own"),
        copay_fen=copay_fen,
        credits=tuple(credits),
        cap_restored_fen=copay_fen,
    )


# --------------------------------------------------------------------------- checks


def _validate_items(items: Sequence[LineItem]) -> None:
    """Client input (the institution's bill): errors name the line, as the API returns them."""
    if not items:
        raise ValidationFailed(
            "A settlement needs at least one item.", details={"field": "items", "why": "empty"}
        )
    for line, item in enumerate(items):
        where = f"items[{line}]"
        if not _is_int(item.amount_fen) or not 0 <= item.amount_fen <= MAX_FEN:
            raise ValidationFailed(
                "Item amounts must be non-negative whole numbers of fen.",
                details={"field": f"{where}.amount_fen", "why": "not_non_negative_int"},
            )
        if not isinstance(item.in_catalogue, bool):
            raise ValidationFailed(
                "in_catalogue must be true or false.",
                details={"field": f"{where}.in_catalogue", "why": "not_bool"},
            )
        for name in ("code", "category"):
            if not isinstance(getattr(item, name), str) or not getattr(item, name):
                raise ValidationFailed(
                    f"Item {name} must be a non-empty string.",
                    details={"field": f"{where}.{name}", "why": "not_non_empty_str"},
                )
    total_fen = sum(item.amount_fen for item in items)
    if total_fen == 0 or total_fen > MAX_FEN:
        raise ValidationFailed(
            "The settlement total must be positive and within range.",
            details={"field": "items", "why": "total_out_of_range", "total_fen": total_fen},
        )


def _check_sources(sources: Sequence[CopaySource], beneficiary: BeneficiaryFacts) -> None:
    ids = [s.binding_id for s in sources]
    if len(set(ids)) != len(ids):
        raise ValueError("bindings must be distinct")
    balances: dict[str, int] = {}
    if beneficiary.own_account is not None:
        balances[beneficiary.own_account.account_id] = beneficiary.own_account.balance_fen
    for source in sources:
        if source.owner_person_id == beneficiary.person_id:
            raise ValueError(f"binding {source.binding_id}: the beneficiary cannot co-pay for themselves")
        account = source.account
        # Two bindings may share an owner account (rebinding), but must agree on its balance.
        if balances.setdefault(account.account_id, account.balance_fen) != account.balance_fen:
            raise ValueError(f"account {account.account_id} appears with different balances")


def _is_int(value: object) -> bool:
    # bool is an int subclass; True must never count as 1 fen.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fen(value: object, name: str) -> None:
    if not (_is_int(value) and 0 <= value <= MAX_FEN):  # type: ignore[operator]
        raise ValueError(f"{name} must be a non-negative int number of fen, got {value!r}")


def _check_optional_fen(value: object, name: str) -> None:
    if value is not None:
        _check_fen(value, name)


def _check_cash(cash_paid_fen: int, cash_refunded_fen: int) -> None:
    _check_fen(cash_paid_fen, "cash_paid_fen")
    _check_fen(cash_refunded_fen, "cash_refunded_fen")
    if cash_refunded_fen > cash_paid_fen:
        raise ValueError("more cash was refunded than paid")


def _check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def _check_aware(value: object, name: str) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


def is_region_code(value: object) -> bool:
    """Six ASCII digits (an administrative region code): "５３２６２１" passes str.isdigit(), but
    codes are compared as ASCII."""
    return isinstance(value, str) and len(value) == 6 and value.isascii() and value.isdigit()


def _check_region_code(value: object, name: str) -> None:
    if not is_region_code(value):
        raise ValueError(f"{name} must be a 6-digit administrative code, got {value!r}")


def _check_date_range(valid_from: object, valid_to: object) -> None:
    # datetime is a date subclass; a datetime here would compare wrongly against the service date.
    for value in (valid_from, valid_to):
        if not isinstance(value, date) or isinstance(value, datetime):
            raise TypeError(f"validity bounds must be dates, got {value!r}")
    if valid_from > valid_to:  # type: ignore[operator]
        raise ValueError("valid_from is after valid_to")
