"""Settling a bill against a scanned e-voucher (R6–R13): one transaction that applies the pure plan.

The path reads straight through (ARCHITECTURE, "One settlement, end to end"):

1. the voucher by its hash, locked (R12), with the person it names, their own account and their
   suspension (R11). If the request cannot go on (used voucher, …) it may be a replay: the
   idempotency look-up by (institution, out_settlement_no) answers it (R13). A new request needs
   no look-up: the unique (institution, out_settlement_no) catches a number used before;
2. the beneficiary's bindings (share-locked: an unbinding waits for this settlement, or happened
   before it) with their owners' suspensions, off-site filings and chronic certifications;
3. the beneficiary's cap row for the service year, then every candidate account in id order,
   locked (R7, R8);
4. ``settlement_plan.compute_plan`` — pure;
5. the settlement, its payments, one balanced journal, the balances (each with a
   ``balance_fen >= x`` guard as a second line of defence), cap and binding usage, the voucher's
   use and the notices (R15, outbox); commit; then the deliveries go to the notifier.

Lock order — the same in refunds, so that no two money transactions deadlock: the voucher (or, in
a refund, the settlement) → the cap_usage row → personal accounts in ascending id → binding_usage
→ the institution's clearing account, always last because it is the hottest row (settlements at
that institution update it), so it is held for the shortest time. An institution has
``ledger.CLEARING_SHARDS`` of them and a settlement credits the one its number picks, so
settlements there do not all queue for one row lock until their commit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    and_,
    any_,
    bindparam,
    exists,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import errors, hot_sql
from app.institution_auth import InstitutionIdentity
from app.policy import SHANGHAI, RegionPolicy, owner_ineligibility, shanghai_date
from app.security.id_number import validate_id_number
from app.security.pii import PiiCipher, mask_id_number, mask_name
from app.services.ledger import clearing_account_for, clearing_account_ids, journal_rows, post_journal
from app.services.vouchers import VoucherCodec, check_usable, well_formed
from app.settlement_plan import (
    AccountFacts,
    BeneficiaryFacts,
    CapState,
    ChronicCertification,
    CopaySource,
    InstitutionFacts,
    LineItem,
    OffsiteFiling,
    Plan,
    PlanPolicy,
    PlanRequest,
    check_service_time,
    compute_plan,
)
from app.timefmt import iso
from models import (
    Account,
    Binding,
    BindingUsage,
    CapUsage,
    Payment,
    Person,
    Refund,
    Settlement,
    Suspension,
    Voucher,
)
from models import ChronicCertification as ChronicCertificationRow
from models import OffsiteFiling as OffsiteFilingRow
from models.base import UTCDateTime
from notify.outbox import AccountMovement, MoneyEvent, add_money_notices, money_notice_drafts, receipt_channels
from notify.retry import RETRY_WINDOW

# Bindings that can still explain a payment or its absence: live ones, and those ended after the
# service (R6: "an unbinding stops all later deductions" is then reported, not silently skipped).
_CANDIDATE_STATES = ("pending_review", "pending_consent", "active", "suspended")

accounts_t = Account.__table__
payments_t = Payment.__table__
cap_usage_t = CapUsage.__table__
binding_usage_t = BindingUsage.__table__


class LedgerInvariantBroken(RuntimeError):
    """A programming error: a balance moved under our row lock. The transaction is rolled back."""


@dataclass(frozen=True)
class MoneyDeps:
    """What settlements and refunds need beyond the session; built once at start-up."""

    pii: PiiCipher
    plan_policy: PlanPolicy
    vouchers: VoucherCodec
    notifier: Any
    receipt_channels: tuple[str, ...]
    province: str = ""  # R1: owners must be insured in the deployment's province (policy ``province``)


def build_money_deps(config: dict[str, Any], pii: PiiCipher, policy: RegionPolicy, notifier: Any) -> MoneyDeps:
    """From config: the voucher key and TTL, the region's payment rules, the receipt channels (R15)."""
    return MoneyDeps(pii=pii, plan_policy=plan_policy_of(policy),
                     vouchers=VoucherCodec.from_config(config["VOUCHER_KEY"], config["VOUCHER_TTL_SECONDS"]),
                     notifier=notifier, receipt_channels=receipt_channels(config), province=policy.province)


@lru_cache(maxsize=8)
def plan_policy_of(policy: RegionPolicy) -> PlanPolicy:
    return PlanPolicy(annual_cap_fen=policy.annual_cap_fen, chronic_extra_fen=policy.chronic_extra_fen,
                      copay_order=policy.copay_order,  # type: ignore[arg-type]
                      own_account_first=policy.own_account_first,
                      max_settlement_delay_hours=policy.max_settlement_delay_hours)


@dataclass(frozen=True)
class SettlementRequest:
    """A parsed ``POST /institution/settlements`` body; ``request_hash`` identifies it for R13."""

    out_settlement_no: str
    voucher_code: str | None
    items: tuple[LineItem, ...]
    service_time: datetime | None
    dry_run: bool
    request_hash: str
    # R12: (social_card_no, id_number) read from the social-security card instead of a voucher.
    card: tuple[str, str] | None = None

    @property
    def auth_method(self) -> str:
        return "card" if self.card is not None else "voucher"

    @classmethod
    def from_body(cls, body: dict[str, Any], parsed_json: Any) -> SettlementRequest:
        """From the schema-loaded body; the hash is over the JSON exactly as parsed (R13)."""
        return cls(
            out_settlement_no=body["out_settlement_no"],
            voucher_code=body.get("voucher_code"),
            card=(body["card"]["social_card_no"], body["card"]["id_number"]) if body.get("card") else None,
            items=tuple(LineItem(code=i["code"], name=i["name"], category=i["category"],
                                 in_catalogue=i["in_catalogue"], amount_fen=i["amount_fen"]) for i in body["items"]),
            service_time=body.get("service_time"),
            dry_run=body.get("dry_run", False),
            request_hash=request_hash(parsed_json),
        )


@dataclass(frozen=True)
class Outcome:
    """An HTTP status and JSON body, stored as they were sent so that a replay repeats them (R13)."""

    status: int
    body: dict[str, Any]
    # True when this answers a repeated request from what was stored (R13): no new money moved.
    replayed: bool = False


def request_hash(parsed_body: Any) -> str:
    """SHA-256 of the canonical JSON of a parsed body: key order and spacing do not matter."""
    canonical = json.dumps(parsed_body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def settle(session: Session, deps: MoneyDeps, institution: InstitutionIdentity, request: SettlementRequest,
           now: datetime, card_guard: Any = None) -> Outcome:
    """Settle (or, with ``dry_run``, only compute) one bill in one transaction (R6–R13).

    A replay of a settled request returns the original 201 body; the same ``out_settlement_no``
    with another body is ``IDEMPOTENCY_CONFLICT``. A dry run takes no locks, writes nothing and is
    not stored.
    """
    write = not request.dry_run
    try:
        service_time = _service_time(request.service_time, now, deps.plan_policy.max_settlement_delay_hours)
    except errors.ServiceTimeOutOfRange:
        # R13 before R20: a replay of a request settled in time returns its answer, however late it
        # comes (the stored service time was in range when it was settled).
        if write:
            with session.begin():
                replay = _replay(session, institution.id, request)
            if replay is not None:
                return replay
        raise
    if request.card is None and not well_formed(request.voucher_code or ""):
        raise errors.VoucherInvalid()  # before any database work, as a forged code deserves
    try:
        with session.begin():
            try:
                voucher = _patient(session, deps, institution, request, service_time, now, lock=write,
                                   guard=card_guard)
            except errors.RateLimited:
                # Card look-ups used up: a replay of a settled request still gets its answer (R13).
                if write and (replay := _replay(session, institution.id, request)) is not None:
                    return replay
                raise
            try:
                _check_can_settle(institution, voucher, now, by_card=request.card is not None)
            except errors.DomainError:
                # A request that cannot go on may be a replay (its voucher is used by then): R13 first.
                if write and (replay := _replay(session, institution.id, request)) is not None:
                    return replay
                raise
            facts = _load_facts(session, deps, institution, request, voucher, service_time, now, lock=write)
            plan = compute_plan(facts.plan_request)
            settlement_no = new_number("S", now) if write else None
            body = _response_body(deps.pii, settlement_no, request, plan, facts, service_time, now)
            if not write:
                return Outcome(200, body)
            delivery_ids = _apply(session, deps, institution, request, voucher, facts, plan, body, service_time, now)
    except IntegrityError:
        # Our out_settlement_no is taken (unique per institution): by an earlier request with
        # another body, or by a concurrent duplicate that won. Answer as R13 says.
        with session.begin():
            replay = _replay(session, institution.id, request)
        if replay is None:
            raise
        return replay
    deps.notifier.committed(delivery_ids)
    return Outcome(201, body)


def get_settlement(session: Session, institution: InstitutionIdentity, settlement_no: str) -> dict[str, Any]:
    """A settlement as the institution that made it sees it now, with its refunds (others: 404)."""
    with session.begin():
        row = session.execute(
            select(Settlement.id, Settlement.response, Settlement.status, Settlement.refunded_fen)
            .where(Settlement.settlement_no == settlement_no, Settlement.institution_id == institution.id)
        ).first()
        if row is None:
            raise errors.NotFound("No such settlement.")
        refunds = session.execute(
            select(Refund.refund_no, Refund.out_refund_no, Refund.amount_fen, Refund.created_at)
            .where(Refund.settlement_id == row.id).order_by(Refund.id)
        ).all()
    return {
        **row.response,
        "status": row.status,
        "refunded_fen": row.refunded_fen,
        "refundable_fen": row.response["total_fen"] - row.refunded_fen,
        "refunds": [{"refund_no": r.refund_no, "out_refund_no": r.out_refund_no, "amount_fen": r.amount_fen,
                     "created_at": iso(r.created_at)} for r in refunds],
    }


# --------------------------------------------------------------------------- reading the facts


@dataclass(frozen=True)
class _Source:
    """A candidate binding as loaded, with what the response and notices need about its owner."""

    binding_id: int
    owner_person_id: int
    relationship: str
    account_id: int
    name_enc: str
    id_number_enc: str


@dataclass(frozen=True)
class _Facts:
    plan_request: PlanRequest
    year: int
    sources: dict[int, _Source]
    accounts: dict[int, int]  # account id → balance, as locked
    beneficiary_enc: tuple[str, str]  # name and ID number, encrypted, for the masked view


def _service_time(given: datetime | None, now: datetime, max_delay_hours: int) -> datetime:
    """R20 + R6: the service time (default now): at most ``max_delay_hours`` old and at most a small
    clock skew ahead of ours (``SERVICE_TIME_OUT_OF_RANGE`` otherwise), checked before any lock."""
    if given is None:
        return now
    if given.tzinfo is None or given.utcoffset() is None:
        raise errors.ValidationFailed("service_time needs an offset.", details={"field": "service_time"})
    check_service_time(given, now, max_delay_hours)
    return min(given, now)


def _check_can_settle(institution: InstitutionIdentity, voucher: Any, now: datetime, by_card: bool = False) -> None:
    """R9: a designated, active institution; R12: a known, unused, unexpired voucher (or a card that
    matches an active registry person) whose binding, for a 亲情码, is still active; an active person."""
    if not (institution.designated and institution.active):
        raise errors.InstitutionNotDesignated(details={"institution": institution.code})
    if by_card:
        if voucher is None:
            raise errors.CardInvalid()
        return
    if voucher is None:
        raise errors.VoucherInvalid()
    check_usable(voucher.expires_at, voucher.used_at, now)
    if voucher.binding_id is not None:
        _require_active(voucher.binding_id, voucher.binding_status)
    if voucher.status != "active":
        raise errors.BeneficiaryNotEligible(details={"reason": "inactive"})


def _require_active(binding_id: int, status: str | None) -> None:
    """R12 + R6: a 亲情码 was issued on the strength of an active binding; once that binding is
    unbound or suspended the code names someone the holder may no longer act for."""
    if status != "active":
        raise errors.BindingNotActive(details={"binding_id": binding_id, "status": status})


def _status_for_code(binding: Any) -> str:
    """The status a 亲情码 sees of the binding it was issued under (a row of ``_BINDINGS``; None:
    unbound): R11 makes it ``suspended`` when the pair or the owner's co-pay use is suspended now,
    whatever the row says — an owner-scope suspension leaves the owner's binding rows ``active``, and
    the code is the owner's co-pay use (under it the beneficiary's own account and the other owners'
    accounts would pay)."""
    if binding is None:
        return "unbound"
    if binding.status == "active" and (binding.binding_suspended_now or binding.owner_suspended_now):
        return "suspended"
    return binding.status


def _replay(session: Session, institution_id: int, request: SettlementRequest) -> Outcome | None:
    row = hot_sql.execute(session.connection(), _REPLAY, {"institution_id": institution_id,
                                                        "out_settlement_no": request.out_settlement_no}).first()
    if row is None:
        return None
    if row.request_hash != request.request_hash:
        raise errors.IdempotencyConflict(details={"out_settlement_no": request.out_settlement_no})
    return Outcome(201, row.response, replayed=True)


def _patient(session: Session, deps: MoneyDeps, institution: InstitutionIdentity, request: SettlementRequest,
             service_time: datetime, now: datetime, *, lock: bool, guard: Any = None) -> Any:
    """Who the patient is (R12): the person a voucher names, or the holder of a social-security card.

    Both give the same row (person, own account, suspension); a card row has no voucher id. A card
    must match an active registry person — ID number by blind index, card number compared in
    constant time — or the row is None (``CARD_INVALID``, never saying which field was wrong). Each
    failed card look-up counts against the institution's limit (``guard``), so the API cannot be
    used to test card numbers; past it, card look-ups are ``RATE_LIMITED``. The look-up holds a slot
    of that limit while it runs, so look-ups sent together cannot overshoot it (``card_guard``).
    """
    if request.card is None:  # the code's form was checked by ``settle`` before any database work
        return _voucher(session, deps.vouchers.code_hash(request.voucher_code), service_time, now, lock=lock)
    if guard is None:
        return _card(session, deps, request, service_time, now)
    with guard.look_up(institution.id) as attempt:
        row = _card(session, deps, request, service_time, now)
        if row is None:
            attempt.failed()
    return row


def _card(session: Session, deps: MoneyDeps, request: SettlementRequest, service_time: datetime,
          now: datetime) -> Any:
    """The active registry person holding this card, or None."""
    folded = _folded(session)
    card_no, id_number = request.card
    row = None
    try:
        number = validate_id_number(id_number, today=shanghai_date(now))
    except errors.IdNumberInvalid:
        number = None
    if number is not None:
        row = hot_sql.execute(session.connection(), _CARD_WITH_FACTS if folded else _CARD,
                              {"id_bidx": deps.pii.blind_index(number, kind="id_number"),
                               "service_time": service_time, "now": now, "on": shanghai_date(service_time)}).first()
    if row is not None:
        on_file = deps.pii.decrypt(row.social_card_no_enc, context="person.social_card_no")
        if row.status != "active" or not hmac.compare_digest(_card_key(on_file).encode(), _card_key(card_no).encode()):
            row = None
    return row


def _card_key(card_no: str) -> str:
    return unicodedata.normalize("NFKC", card_no).strip().upper()


def _voucher(session: Session, code_hash: str, service_time: datetime, now: datetime, *, lock: bool) -> Any:
    """The voucher, the person it names (with their own account) and whether they are suspended (R11);
    on PostgreSQL also their filings and certifications valid on the service date (``facts``)."""
    statements = _VOUCHER_WITH_FACTS if _folded(session) else (_VOUCHER, _VOUCHER_LOCKED)
    return hot_sql.execute(session.connection(), statements[lock], {
        "code_hash": code_hash, "service_time": service_time, "now": now, "on": shanghai_date(service_time)}).first()


def _folded(session: Session) -> bool:
    """PostgreSQL: facts read in fewer statements and the writes made in one (JSON aggregates and
    data-modifying CTEs); SQLite, the embedded default, runs the plain statements one by one."""
    return session.get_bind().dialect.name == "postgresql"


def _load_facts(session: Session, deps: MoneyDeps, institution: InstitutionIdentity, request: SettlementRequest,
                voucher: Any, service_time: datetime, now: datetime, *, lock: bool) -> _Facts:
    beneficiary_id = voucher.person_id
    service_date = shanghai_date(service_time)
    year = service_date.year
    bindings = hot_sql.execute(session.connection(), _BINDINGS_SHARED if lock else _BINDINGS,
                               {"beneficiary_id": beneficiary_id, "service_time": service_time, "now": now}).all()
    if voucher.binding_id is not None:
        # R12 again, on the share-locked rows: the voucher statement read the binding's status
        # without a lock, and an unbind or suspension may have committed since.
        issued_under = next((b for b in bindings if b.id == voucher.binding_id), None)
        _require_active(voucher.binding_id, _status_for_code(issued_under))
    folded = _folded(session)
    if folded:
        filings, certifications = _facts_from_json(voucher.facts)
    else:
        filings, certifications = _filings_and_certifications(session, beneficiary_id, service_date)

    if lock:
        used_fen = lock_cap_row(session, beneficiary_id, year)
    else:
        used_fen = session.connection().scalar(_CAP_USED, {"beneficiary_id": beneficiary_id, "year": year}) or 0
    account_ids = {b.account_id for b in bindings} | ({voucher.own_account_id} if voucher.own_account_id else set())
    limited = [b.id for b in bindings if b.yearly_limit_fen is not None]
    if lock and folded and account_ids:
        # The accounts locked in id order and, read after the cap row's lock (which serialises every
        # writer of this beneficiary's binding usage), what each limited binding paid this year.
        rows = hot_sql.execute(session.connection(), _LOCK_ACCOUNTS_WITH_USAGE,
                               {"ids": sorted(account_ids), "limited": limited, "year": year}).all()
        balances = {r.id: r.balance_fen for r in rows}
        paid_by_binding = {int(b): paid for b, paid in (rows[0].usage or {}).items()} if rows else {}
    else:
        balances = lock_accounts(session, account_ids) if lock else _balances(session, account_ids)
        paid_by_binding = (dict(session.connection().execute(_BINDING_USAGE, {"ids": limited, "year": year}).all())
                           if limited else {})

    sources = []
    for b in bindings:
        sources.append(CopaySource(
            binding_id=str(b.id),
            owner_person_id=str(b.owner_person_id),
            account=AccountFacts(str(b.account_id), str(b.owner_person_id), balances[b.account_id]),
            effective_at=b.effective_at,
            ended_at=b.ended_at,
            status_now="suspended" if b.status == "active" and b.binding_suspended_now else b.status,
            suspended_at_service_time=b.suspended_at_service,
            owner_suspended=b.owner_suspended_now,
            yearly_limit_fen=b.yearly_limit_fen,
            paid_this_year_by_this_binding_fen=paid_by_binding.get(b.id, 0),
            owner_ineligible=_owner_ineligible(b, deps.province),
        ))
    own = voucher.own_account_id
    plan_request = PlanRequest(
        items=request.items,
        institution=InstitutionFacts(code=institution.code, kind=institution.kind,  # type: ignore[arg-type]
                                     region_code=institution.region_code, designated=institution.designated,
                                     active=institution.active),
        beneficiary=BeneficiaryFacts(
            person_id=str(beneficiary_id), region_code=voucher.region_code,
            own_account=AccountFacts(str(own), str(beneficiary_id), balances[own]) if own else None,
            suspended=voucher.beneficiary_suspended,
        ),
        sources=tuple(sources),
        cap=CapState(used_fen=used_fen, chronic_certifications=tuple(certifications)),
        filings=tuple(filings),
        policy=deps.plan_policy,
        service_time=service_time,
        service_date=service_date,
        settle_time=now,
    )
    return _Facts(
        plan_request=plan_request, year=year, accounts=balances,
        beneficiary_enc=(voucher.name_enc, voucher.id_number_enc),
        sources={b.id: _Source(b.id, b.owner_person_id, b.relationship, b.account_id, b.name_enc, b.id_number_enc)
                 for b in bindings},
    )


def _owner_ineligible(binding: Any, province: str) -> str | None:
    """R1 + R11: why the binding's owner is no longer an active eligible owner (None: they are).
    The bindings query inner-joins the owner's personal account, so ``has_account`` holds here."""
    return owner_ineligibility(status=binding.owner_status, insurance_type=binding.owner_insurance_type,
                               region_code=binding.owner_region_code, has_account=True, province=province)


def _filings_and_certifications(session: Session, person_id: int, service_date: date
                                ) -> tuple[list[OffsiteFiling], list[ChronicCertification]]:
    """R10 filings and R8 certifications valid on the service date, in one round trip."""
    filings, certifications = [], []
    for row in session.execute(_FILINGS_AND_CERTIFICATIONS, {"person_id": person_id, "on": service_date}):
        if row.what == "filing":
            filings.append(OffsiteFiling(row.value, row.valid_from, row.valid_to))
        else:
            certifications.append(ChronicCertification(row.valid_from, row.valid_to))
    return filings, certifications


def _facts_from_json(facts: list[list[Any]] | None) -> tuple[list[OffsiteFiling], list[ChronicCertification]]:
    """The ``facts`` column of the PostgreSQL voucher/card statement: [what, value, from, to] rows."""
    filings, certifications = [], []
    for what, value, valid_from, valid_to in facts or ():
        if what == "filing":
            filings.append(OffsiteFiling(value, date.fromisoformat(valid_from), date.fromisoformat(valid_to)))
        else:
            certifications.append(ChronicCertification(date.fromisoformat(valid_from), date.fromisoformat(valid_to)))
    return filings, certifications


def lock_cap_row(session: Session, beneficiary_id: int, year: int) -> int:
    """Create the (beneficiary, year) cap row if needed and lock it; return its ``used_fen`` (R8).

    One statement: ``ON CONFLICT DO UPDATE`` takes the row lock (waiting for a concurrent settlement
    of the same beneficiary to commit) and ``RETURNING`` reads the value that one left.
    """
    stmt = _CAP_LOCK[session.get_bind().dialect.name]
    return hot_sql.execute(
        session.connection(), stmt, {"beneficiary_person_id": beneficiary_id, "year": year, "used_fen": 0}).scalar_one()


def lock_accounts(session: Session, account_ids: Iterable[int]) -> dict[int, int]:
    """Lock accounts in ascending id order (the one order every money transaction uses); id → balance."""
    ids = sorted(set(account_ids))
    return dict(session.connection().execute(_LOCK_ACCOUNTS, {"ids": ids}).all()) if ids else {}


def _balances(session: Session, account_ids: Iterable[int]) -> dict[int, int]:
    ids = list(set(account_ids))
    return dict(session.connection().execute(_BALANCES, {"ids": ids}).all()) if ids else {}


# --------------------------------------------------------------------------- writing


def _apply(session: Session, deps: MoneyDeps, institution: InstitutionIdentity, request: SettlementRequest,
           voucher: Any, facts: _Facts, plan: Plan, body: dict[str, Any], service_time: datetime,
           now: datetime) -> list[int]:
    """Write everything the plan decided; return the delivery ids of the notices (R15)."""
    if _folded(session):
        return _apply_in_one_statement(session, deps, institution, request, voucher, facts, plan, body,
                                       service_time, now)
    settlement_id = session.execute(_INSERT_SETTLEMENT, {
        "settlement_no": body["settlement_no"], "institution_id": institution.id,
        "out_settlement_no": request.out_settlement_no, "request_hash": request.request_hash,
        "voucher_id": voucher.id, "beneficiary_person_id": voucher.person_id, "service_time": service_time,
        "auth_method": request.auth_method,
        "status": "settled", "total_fen": plan.total_fen, "eligible_fen": plan.eligible_fen,
        "own_account_fen": plan.own_account_fen, "copay_fen": plan.copay_fen, "cash_fen": plan.cash_fen,
        "refunded_fen": 0, "items": [_item_json(item) for item in request.items], "reasons": body["reasons"],
        "response": body, "created_at": now,
    }).scalar_one()
    if voucher.id is not None:  # a card settlement has no voucher to use up
        session.execute(_USE_VOUCHER, {"voucher_id": voucher.id, "at": now})
    if not plan.payments:
        return []  # all cash: no money moves through the ledger, nobody's account is touched

    payments = [(int(p.account_id), int(p.owner_person_id), int(p.binding_id) if p.binding_id else None, p)
                for p in plan.payments]
    rows = [{"settlement_id": settlement_id, "sequence": p.sequence, "kind": p.kind, "account_id": account_id,
             "owner_person_id": owner_id, "binding_id": binding_id, "amount_fen": p.amount_fen, "refunded_fen": 0,
             "balance_after_fen": p.balance_after_fen, "beneficiary_person_id": voucher.person_id,
             "created_year": now.astimezone(SHANGHAI).year} for account_id, owner_id, binding_id, p in payments]
    session.execute(_INSERT_PAYMENT, rows[0] if len(rows) == 1 else rows)  # one payment is the common case
    debits: dict[int, int] = {}
    for account_id, _, _, p in payments:
        debits[account_id] = debits.get(account_id, 0) + p.amount_fen
    for account_id, amount_fen in debits.items():
        move_balance(session, account_id, -amount_fen, now, expected_after=facts.accounts[account_id] - amount_fen)
    paid_fen = plan.own_account_fen + plan.copay_fen
    clearing_id = _clearing_account(session, institution, body["settlement_no"])
    post_journal(session, "settlement", [*((a, -x) for a, x in debits.items()), (clearing_id, paid_fen)], now,
                 settlement_id=settlement_id, memo=body["settlement_no"])

    if plan.copay_fen:
        session.execute(_ADD_CAP_USAGE, {"beneficiary_id": voucher.person_id, "in_year": facts.year,
                                         "delta": plan.copay_fen})
        for binding_id, amount_fen in _per_binding(payments).items():
            _add_binding_usage(session, binding_id, facts.year, amount_fen)

    delivery_ids = add_money_notices(
        session,
        MoneyEvent(settlement_id=settlement_id, settlement_no=body["settlement_no"],
                   beneficiary_person_id=voucher.person_id, beneficiary_masked_name=body["beneficiary"]["name"],
                   institution_name=institution.name, at=now,
                   relationships={facts.sources[b].owner_person_id: facts.sources[b].relationship
                                  for _, _, b, _ in payments if b is not None}),
        [AccountMovement(owner_id, p.kind, p.amount_fen, p.balance_after_fen) for _, owner_id, _, p in payments],
        receipt_channels=deps.receipt_channels,
    )
    move_balance(session, clearing_id, paid_fen, now)  # last: the institution's row is the hottest
    return delivery_ids


def _apply_in_one_statement(session: Session, deps: MoneyDeps, institution: InstitutionIdentity,
                            request: SettlementRequest, voucher: Any, facts: _Facts, plan: Plan,
                            body: dict[str, Any], service_time: datetime, now: datetime) -> list[int]:
    """PostgreSQL: the same rows as ``_apply`` writes statement by statement, in ONE data-modifying
    statement (``_WRITE_ALL``): one round trip instead of eleven.

    PostgreSQL runs the parts of such a statement in no documented order, so safety cannot rest on
    their order, and does not: every row lock the statement takes is already held — the voucher,
    the cap row and the personal accounts were locked while the facts were read — except two. The
    ``binding_usage`` rows are only ever written (here and by refunds) by a transaction holding
    their beneficiary's cap row for that year, so nobody can hold one of them while waiting for
    something this transaction holds; the institution's clearing account is taken in this last
    statement, at the end of the transaction, so it is held only until the commit. Neither can close
    a wait cycle, whatever the order of the parts. The guards stay: each debit applies only while
    the balance covers it, and the balances it returns must be the plan's and the clearing account
    must be credited (else ``LedgerInvariantBroken`` rolls everything back)."""
    if now.utcoffset() is None or service_time.utcoffset() is None:
        # The plain path's UTCDateTime refuses naive times; the text statement binds them as given.
        raise ValueError("settlement times must be timezone-aware")
    created_year = now.astimezone(SHANGHAI).year
    payments = [(int(p.account_id), int(p.owner_person_id), int(p.binding_id) if p.binding_id else None, p)
                for p in plan.payments]
    debits: dict[int, int] = {}
    for account_id, _, _, p in payments:
        debits[account_id] = debits.get(account_id, 0) + p.amount_fen
    paid_fen = plan.own_account_fen + plan.copay_fen
    clearing_id = None
    entries: list[tuple[int, int]] = []
    drafts: list[Any] = []
    if payments:
        clearing_id = _clearing_account(session, institution, body["settlement_no"])
        entries = journal_rows("settlement", [*((a, -x) for a, x in debits.items()), (clearing_id, paid_fen)])
        drafts = money_notice_drafts(
            MoneyEvent(settlement_id=0, settlement_no=body["settlement_no"],  # the id is the statement's
                       beneficiary_person_id=voucher.person_id,
                       beneficiary_masked_name=body["beneficiary"]["name"], institution_name=institution.name,
                       at=now, relationships={facts.sources[b].owner_person_id: facts.sources[b].relationship
                                              for _, _, b, _ in payments if b is not None}),
            [AccountMovement(owner_id, p.kind, p.amount_fen, p.balance_after_fen) for _, owner_id, _, p in payments],
            receipt_channels=deps.receipt_channels)
    dumps = json.dumps
    row = hot_sql.execute(session.connection(), _WRITE_ALL, {
        "settlement_no": body["settlement_no"], "institution_id": institution.id,
        "out_settlement_no": request.out_settlement_no, "request_hash": request.request_hash,
        "voucher_id": voucher.id, "beneficiary_person_id": voucher.person_id, "service_time": service_time,
        "auth_method": request.auth_method, "total_fen": plan.total_fen, "eligible_fen": plan.eligible_fen,
        "own_account_fen": plan.own_account_fen, "copay_fen": plan.copay_fen, "cash_fen": plan.cash_fen,
        "items": dumps([_item_json(item) for item in request.items]), "reasons": dumps(body["reasons"]),
        "response": dumps(body), "now": now, "year": facts.year, "created_year": created_year,
        "payments": dumps([{"sequence": p.sequence, "kind": p.kind, "account_id": account_id,
                            "owner_person_id": owner_id, "binding_id": binding_id, "amount_fen": p.amount_fen,
                            "balance_after_fen": p.balance_after_fen}
                           for account_id, owner_id, binding_id, p in payments]),
        "debit_accounts": list(debits), "debit_amounts": list(debits.values()),
        "clearing_id": clearing_id, "paid_fen": paid_fen,
        "entries": dumps([{"account_id": a, "amount_fen": x} for a, x in entries]),
        "binding_usage": dumps([{"binding_id": b, "paid_fen": x} for b, x in _per_binding(payments).items()]),
        "notices": dumps([{"kind": d.kind, "person_id": d.person_id, "amount_fen": d.amount_fen,
                           "balance_after_fen": d.balance_after_fen, "content": d.content,
                           "channels": list(d.channels)} for d in drafts]),
        "give_up_at": now + RETRY_WINDOW,
    }).one()
    after = {account_id: balance for account_id, balance in row.debited or []}
    if after != {a: facts.accounts[a] - x for a, x in debits.items()}:
        raise LedgerInvariantBroken(f"accounts {sorted(debits)}: balance moved under the lock")
    if payments and row.clearing_after is None:
        raise LedgerInvariantBroken(f"account {clearing_id}: the clearing account was not credited")
    return list(row.delivery_ids or [])


def _clearing_account(session: Session, institution: InstitutionIdentity, settlement_no: str) -> int:
    """Which of the institution's clearing accounts this settlement credits (``ledger.CLEARING_SHARDS``)."""
    ids = institution.clearing_account_ids or clearing_account_ids(session, institution.id)
    # Fewer than CLEARING_SHARDS (an institution the release before migration 0009 created) is
    # still right, only less spread: the registry load creates the rest, outside this transaction's
    # locks (creating them here would take new rows' locks while the accounts are held).
    return clearing_account_for(ids, settlement_no)


def move_balance(session: Session, account_id: int, delta_fen: int, now: datetime,
                 expected_after: int | None = None) -> int:
    """Add ``delta_fen`` to a locked account and return the new balance.

    A debit only applies while the balance covers it: a second line of defence behind the row lock
    and the plan, which already made sure of it (the CHECK constraint on personal accounts is the third).
    """
    if delta_fen < 0:
        after = session.scalar(_DEBIT, {"account_id": account_id, "amount": -delta_fen, "at": now})
    else:
        after = session.scalar(_CREDIT, {"account_id": account_id, "amount": delta_fen, "at": now})
    if after is None or (expected_after is not None and after != expected_after):
        raise LedgerInvariantBroken(f"account {account_id}: balance moved under the lock")
    return after


def _add_binding_usage(session: Session, binding_id: int, year: int, delta_fen: int) -> None:
    """What the binding's owner paid for its beneficiary this year (R8 owner limits), by ``delta_fen``."""
    session.execute(_ADD_BINDING_USAGE[session.get_bind().dialect.name],
                    {"binding_id": binding_id, "year": year, "paid_fen": delta_fen})


def _per_binding(payments: Iterable[tuple[int, int, int | None, Any]]) -> dict[int, int]:
    totals: dict[int, int] = {}
    for _, _, binding_id, p in payments:
        if p.kind == "copay" and binding_id is not None:
            totals[binding_id] = totals.get(binding_id, 0) + p.amount_fen
    return totals


# --------------------------------------------------------------------------- the response


def masked_person(pii: PiiCipher, person_id: int, name_enc: str, id_number_enc: str) -> dict[str, Any]:
    """A person as institutions and users see them (R17: masked)."""
    return {
        "person_id": person_id,
        "name": mask_name(pii.decrypt(name_enc, context="person.name")),
        "id_number": mask_id_number(pii.decrypt(id_number_enc, context="person.id_number")),
    }


def _response_body(pii: PiiCipher, settlement_no: str | None, request: SettlementRequest, plan: Plan,
                   facts: _Facts, service_time: datetime, now: datetime) -> dict[str, Any]:
    beneficiary_id = int(facts.plan_request.beneficiary.person_id)
    beneficiary = masked_person(pii, beneficiary_id, *facts.beneficiary_enc)
    payers: dict[int, dict[str, Any]] = {beneficiary_id: beneficiary}
    for source in facts.sources.values():
        if any(p.owner_person_id == str(source.owner_person_id) for p in plan.payments):
            payers.setdefault(source.owner_person_id,
                              masked_person(pii, source.owner_person_id, source.name_enc, source.id_number_enc))
    return {
        "settlement_no": settlement_no,
        "out_settlement_no": request.out_settlement_no,
        "status": "settled" if settlement_no else "dry_run",
        "total_fen": plan.total_fen,
        "eligible_fen": plan.eligible_fen,
        "own_account_fen": plan.own_account_fen,
        "copay_fen": plan.copay_fen,
        "cash_fen": plan.cash_fen,
        "payments": [{"payer": payers[int(p.owner_person_id)], "kind": p.kind, "amount_fen": p.amount_fen}
                     for p in plan.payments],
        "beneficiary": beneficiary,
        "reasons": [_reason_json(reason) for reason in plan.reasons],
        "year": facts.year,
        "cap_fen": plan.cap_fen,
        "cap_used_fen": plan.cap_used_after_fen,
        "service_time": iso(service_time),
        "settled_at": iso(now) if settlement_no else None,
        "auth_method": request.auth_method,  # R12: voucher | card
    }


def _reason_json(reason: dict[str, Any]) -> dict[str, Any]:
    """Plan reasons carry ids as text (the pure module's convention); the API shows them as numbers."""
    return {key: int(value) if key in ("binding_id", "owner_person_id") and value is not None else value
            for key, value in reason.items()}


def _item_json(item: LineItem) -> dict[str, Any]:
    return {"code": item.code, "name": item.name, "category": item.category, "in_catalogue": item.in_catalogue,
            "amount_fen": item.amount_fen}


def new_number(prefix: str, now: datetime) -> str:
    """``S20250301`` + 12 random digits: unique by constraint, unguessable, dated in Shanghai time."""
    return f"{prefix}{now.astimezone(SHANGHAI):%Y%m%d}{secrets.randbelow(10**12):012d}"


# --------------------------------------------------------------------------- statements, built once
# Core SQL over the mapped tables, compiled once per process: the hot path only binds values.

vouchers_t, persons_t, bindings_t = Voucher.__table__, Person.__table__, Binding.__table__
suspensions_t, settlements_t = Suspension.__table__, Settlement.__table__
filings_t, certifications_t = OffsiteFilingRow.__table__, ChronicCertificationRow.__table__
_owners = persons_t.alias("owners")



def _in_force(*moments: Any) -> Any:
    """A suspension in force at any of ``moments`` (from ``starts_at``, until ``lifted_at`` if lifted)."""
    return or_(*(and_(suspensions_t.c.starts_at <= at,
                      or_(suspensions_t.c.lifted_at.is_(None), suspensions_t.c.lifted_at > at)) for at in moments))


def _suspended(scope: str, target: Any, *moments: Any) -> Any:
    """R11 in SQL: a ``scope`` suspension of ``target`` (a person) in force at any of ``moments``."""
    return exists().where(suspensions_t.c.scope == scope, suspensions_t.c.person_id == target, _in_force(*moments))


def _pair_suspended(*moments: Any) -> Any:
    """R11 in SQL: a binding-scope suspension holds for the pair (owner, beneficiary), not one row:
    a suspension of ANY binding between the two — e.g. one unbound since — stops this binding too."""
    suspended_binding = bindings_t.alias("suspended_binding")
    return exists().where(
        suspensions_t.c.scope == "binding", suspended_binding.c.id == suspensions_t.c.binding_id,
        suspended_binding.c.owner_person_id == bindings_t.c.owner_person_id,
        suspended_binding.c.beneficiary_person_id == bindings_t.c.beneficiary_person_id,
        _in_force(*moments),
    )


_SERVICE, _NOW = bindparam("service_time", type_=UTCDateTime()), bindparam("now", type_=UTCDateTime())

_REPLAY = select(settlements_t.c.request_hash, settlements_t.c.response).where(
    settlements_t.c.institution_id == bindparam("institution_id"),
    settlements_t.c.out_settlement_no == bindparam("out_settlement_no"))

_voucher_binding = bindings_t.alias("voucher_binding")
_VOUCHER = (
    select(vouchers_t.c.id, vouchers_t.c.person_id, vouchers_t.c.expires_at, vouchers_t.c.used_at,
           persons_t.c.region_code, persons_t.c.status, persons_t.c.name_enc, persons_t.c.id_number_enc,
           accounts_t.c.id.label("own_account_id"),
           _suspended("beneficiary", vouchers_t.c.person_id, _SERVICE, _NOW).label("beneficiary_suspended"),
           # R12: a 亲情码 names the binding it was issued under; that binding's status now.
           vouchers_t.c.binding_id,
           select(_voucher_binding.c.status).where(_voucher_binding.c.id == vouchers_t.c.binding_id)
           .scalar_subquery().label("binding_status"))
    .join(persons_t, persons_t.c.id == vouchers_t.c.person_id)
    .outerjoin(accounts_t, accounts_t.c.person_id == vouchers_t.c.person_id)
    .where(vouchers_t.c.code_hash == bindparam("code_hash"))
)
_VOUCHER_LOCKED = _VOUCHER.with_for_update(of=vouchers_t)
# R12 card: the same columns for the card's holder (no voucher), plus the card number to compare.
_CARD = (
    select(null().label("id"), persons_t.c.id.label("person_id"), null().label("expires_at"),
           null().label("used_at"), persons_t.c.region_code, persons_t.c.status, persons_t.c.name_enc,
           persons_t.c.id_number_enc, accounts_t.c.id.label("own_account_id"),
           _suspended("beneficiary", persons_t.c.id, _SERVICE, _NOW).label("beneficiary_suspended"),
           null().label("binding_id"), null().label("binding_status"), persons_t.c.social_card_no_enc)
    .outerjoin(accounts_t, accounts_t.c.person_id == persons_t.c.id)
    .where(persons_t.c.id_number_bidx == bindparam("id_bidx"))
)



def _facts_of(person: Any) -> Any:
    """PostgreSQL: the person's R10 filings and R8 certifications valid on the service date (``on``),
    as one JSON array of [what, value, valid_from, valid_to] — a column of the voucher statement
    instead of a statement of its own. Neither path locks these rows (a filing revoked while a
    settlement is under way may or may not be seen by it); here they are read from the voucher
    statement's snapshot, a moment earlier than the plain path's separate read."""
    facts = union_all(*(
        select(literal(what).label("what"), value.label("value"), table.c.valid_from, table.c.valid_to)
        .where(table.c.person_id == person, table.c.revoked_at.is_(None),
               table.c.valid_from <= bindparam("on"), table.c.valid_to >= bindparam("on"))
        .correlate(person.table)
        for what, table, value in (("filing", filings_t, filings_t.c.region_prefix),
                                   ("chronic", certifications_t, certifications_t.c.disease_code))
    )).subquery("facts")
    return (select(func.json_agg(func.json_build_array(facts.c.what, facts.c.value, facts.c.valid_from,
                                                       facts.c.valid_to)))
            .scalar_subquery().label("facts"))


# (no lock, lock) on PostgreSQL
_VOUCHER_WITH_FACTS = (_VOUCHER.add_columns(_facts_of(vouchers_t.c.person_id)),
                       _VOUCHER_LOCKED.add_columns(_facts_of(vouchers_t.c.person_id)))
_CARD_WITH_FACTS = _CARD.add_columns(_facts_of(persons_t.c.id))

_BINDINGS = (
    select(bindings_t.c.id, bindings_t.c.owner_person_id, bindings_t.c.relationship, bindings_t.c.status,
           bindings_t.c.effective_at, bindings_t.c.ended_at, bindings_t.c.yearly_limit_fen,
           accounts_t.c.id.label("account_id"), _owners.c.name_enc, _owners.c.id_number_enc,
           _owners.c.status.label("owner_status"), _owners.c.insurance_type.label("owner_insurance_type"),
           _owners.c.region_code.label("owner_region_code"),
           or_(_pair_suspended(_SERVICE),
               _suspended("owner", bindings_t.c.owner_person_id, _SERVICE)).label("suspended_at_service"),
           _pair_suspended(_NOW).label("binding_suspended_now"),
           _suspended("owner", bindings_t.c.owner_person_id, _NOW).label("owner_suspended_now"))
    .join(_owners, _owners.c.id == bindings_t.c.owner_person_id)
    .join(accounts_t, accounts_t.c.person_id == bindings_t.c.owner_person_id)
    .where(bindings_t.c.beneficiary_person_id == bindparam("beneficiary_id"),
           # Inline literals, not an expanding parameter: nothing to re-render at each execution.
           or_(bindings_t.c.status.in_([literal_column(f"'{state}'") for state in _CANDIDATE_STATES]),
               and_(bindings_t.c.status == "unbound", bindings_t.c.ended_at > _SERVICE)))
    .order_by(bindings_t.c.id)
)
# Share-locked: an unbinding or a limit change waits for this settlement (or happened before it).
_BINDINGS_SHARED = _BINDINGS.with_for_update(read=True, of=bindings_t)

_FILINGS_AND_CERTIFICATIONS = union_all(*(
    select(literal(what).label("what"), value.label("value"), table.c.valid_from, table.c.valid_to)
    .where(table.c.person_id == bindparam("person_id"), table.c.revoked_at.is_(None),
           table.c.valid_from <= bindparam("on"), table.c.valid_to >= bindparam("on"))
    for what, table, value in (("filing", filings_t, filings_t.c.region_prefix),
                               ("chronic", certifications_t, certifications_t.c.disease_code))
))

_CAP_USED = select(cap_usage_t.c.used_fen).where(
    cap_usage_t.c.beneficiary_person_id == bindparam("beneficiary_id"), cap_usage_t.c.year == bindparam("year"))
_CAP_LOCK = {
    name: (lambda stmt: stmt.on_conflict_do_update(
        index_elements=[cap_usage_t.c.beneficiary_person_id, cap_usage_t.c.year],
        set_={"used_fen": cap_usage_t.c.used_fen},
    ).returning(cap_usage_t.c.used_fen))(dialect_insert(cap_usage_t).values(
        # Named: the columns do not follow the keys given at execution (app.hot_sql compiles it once).
        beneficiary_person_id=bindparam("beneficiary_person_id"), year=bindparam("year"),
        used_fen=bindparam("used_fen")))
    for name, dialect_insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}
_ADD_CAP_USAGE = update(cap_usage_t).where(
    cap_usage_t.c.beneficiary_person_id == bindparam("beneficiary_id"), cap_usage_t.c.year == bindparam("in_year"),
).values(used_fen=cap_usage_t.c.used_fen + bindparam("delta"))
_BINDING_USAGE = select(binding_usage_t.c.binding_id, binding_usage_t.c.paid_fen).where(
    binding_usage_t.c.binding_id.in_(bindparam("ids", expanding=True)), binding_usage_t.c.year == bindparam("year"))
_ADD_BINDING_USAGE = {
    name: (lambda stmt: stmt.on_conflict_do_update(
        index_elements=[binding_usage_t.c.binding_id, binding_usage_t.c.year],
        set_={"paid_fen": binding_usage_t.c.paid_fen + stmt.excluded.paid_fen},
    ))(dialect_insert(binding_usage_t))
    for name, dialect_insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}

_LOCK_ACCOUNTS = (select(accounts_t.c.id, accounts_t.c.balance_fen)
                  .where(accounts_t.c.id.in_(bindparam("ids", expanding=True)))
                  .order_by(accounts_t.c.id).with_for_update())
_LOCK_ACCOUNTS_WITH_USAGE = (
    select(accounts_t.c.id, accounts_t.c.balance_fen,
           select(func.json_object_agg(binding_usage_t.c.binding_id, binding_usage_t.c.paid_fen))
           .where(binding_usage_t.c.binding_id == any_(bindparam("limited", type_=ARRAY(BigInteger))),
                  binding_usage_t.c.year == bindparam("year"))
           .scalar_subquery().label("usage"))
    # (PostgreSQL only) arrays, not expanding IN lists: the text does not change with the number of
    # accounts, so it is neither re-rendered at each execution nor prepared once per length.
    .where(accounts_t.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger))))
    .order_by(accounts_t.c.id).with_for_update(of=accounts_t))
_BALANCES = select(accounts_t.c.id, accounts_t.c.balance_fen).where(
    accounts_t.c.id.in_(bindparam("ids", expanding=True)))
_DEBIT = (update(accounts_t)
          .where(accounts_t.c.id == bindparam("account_id"), accounts_t.c.balance_fen >= bindparam("amount"))
          .values(balance_fen=accounts_t.c.balance_fen - bindparam("amount"), updated_at=bindparam("at"))
          .returning(accounts_t.c.balance_fen))
_CREDIT = (update(accounts_t).where(accounts_t.c.id == bindparam("account_id"))
           .values(balance_fen=accounts_t.c.balance_fen + bindparam("amount"), updated_at=bindparam("at"))
           .returning(accounts_t.c.balance_fen))

_INSERT_SETTLEMENT = insert(settlements_t).returning(settlements_t.c.id)
_INSERT_PAYMENT = insert(payments_t)
_USE_VOUCHER = update(vouchers_t).where(vouchers_t.c.id == bindparam("voucher_id")).values(used_at=bindparam("at"))

# PostgreSQL: every write of a settlement in one statement (``_apply_in_one_statement``). Row sets
# travel as JSON arrays expanded by ``jsonb_to_recordset``; the data-modifying CTEs all see the
# snapshot the statement started with, and each reads only what the CTEs before it RETURN.
# Whitespace is squeezed out (``_squeezed``): psycopg caches the parsing of statements of up to 4 KB.
_WRITE_ALL_SQL = """
WITH s AS (
  INSERT INTO settlements (settlement_no, institution_id, out_settlement_no, request_hash, voucher_id,
                           auth_method, beneficiary_person_id, service_time, status, total_fen, eligible_fen,
                           own_account_fen, copay_fen, cash_fen, refunded_fen, items, reasons, response, created_at)
  VALUES (:settlement_no, :institution_id, :out_settlement_no, :request_hash, :voucher_id, :auth_method,
          :beneficiary_person_id, :service_time, 'settled', :total_fen, :eligible_fen, :own_account_fen,
          :copay_fen, :cash_fen, 0, CAST(:items AS jsonb), CAST(:reasons AS jsonb), CAST(:response AS jsonb), :now)
  RETURNING id
), used AS (
  UPDATE vouchers SET used_at = :now WHERE id = :voucher_id
), p AS (
  INSERT INTO payments (settlement_id, sequence, kind, account_id, owner_person_id, binding_id, amount_fen,
                        refunded_fen, balance_after_fen, beneficiary_person_id, created_year)
  SELECT s.id, x.sequence, x.kind, x.account_id, x.owner_person_id, x.binding_id, x.amount_fen, 0,
         x.balance_after_fen, :beneficiary_person_id, :created_year
  FROM s, jsonb_to_recordset(CAST(:payments AS jsonb))
          AS x(sequence int, kind text, account_id bigint, owner_person_id bigint, binding_id bigint,
               amount_fen bigint, balance_after_fen bigint)
), debited AS (
  -- arrays, not JSON: unnest's row estimate keeps this a look-up by primary key, never a scan
  UPDATE accounts a SET balance_fen = a.balance_fen - x.amount_fen, updated_at = :now
  FROM unnest(CAST(:debit_accounts AS bigint[]), CAST(:debit_amounts AS bigint[])) AS x(account_id, amount_fen)
  WHERE a.id = x.account_id AND a.balance_fen >= x.amount_fen
  RETURNING a.id, a.balance_fen
), j AS (
  INSERT INTO journals (kind, settlement_id, memo, created_at)
  SELECT 'settlement', s.id, :settlement_no, :now FROM s WHERE :paid_fen > 0
  RETURNING id
), e AS (
  INSERT INTO ledger_entries (journal_id, account_id, amount_fen)
  SELECT j.id, x.account_id, x.amount_fen
  FROM j, jsonb_to_recordset(CAST(:entries AS jsonb)) AS x(account_id bigint, amount_fen bigint)
), cap AS (
  UPDATE cap_usage SET used_fen = used_fen + :copay_fen
  WHERE beneficiary_person_id = :beneficiary_person_id AND year = :year AND :copay_fen > 0
), bu AS (
  INSERT INTO binding_usage (binding_id, year, paid_fen)
  SELECT x.binding_id, :year, x.paid_fen FROM jsonb_to_recordset(CAST(:binding_usage AS jsonb))
                                                AS x(binding_id bigint, paid_fen bigint)
  ON CONFLICT (binding_id, year) DO UPDATE SET paid_fen = binding_usage.paid_fen + excluded.paid_fen
), n AS (
  INSERT INTO notices (kind, person_id, settlement_id, movement_key, settlement_no, amount_fen, balance_after_fen,
                       content, created_at)
  SELECT x.kind, x.person_id, s.id, 's' || s.id, :settlement_no, x.amount_fen, x.balance_after_fen, x.content, :now
  FROM s, jsonb_to_recordset(CAST(:notices AS jsonb))
          AS x(kind text, person_id bigint, amount_fen bigint, balance_after_fen bigint, content jsonb,
               channels text[])
  RETURNING id, person_id, kind
), d AS (
  -- each notice goes to the recipient's most recently signed-in user on each channel it may use
  INSERT INTO deliveries (notice_id, channel, user_id, state, attempts, credit_used, next_attempt_at, give_up_at,
                          created_at, updated_at)
  SELECT n.id, u.channel, u.id, 'pending', 0, false, :now, :give_up_at, :now, :now
  FROM n JOIN jsonb_to_recordset(CAST(:notices AS jsonb)) AS x(kind text, person_id bigint, channels text[])
         ON x.kind = n.kind AND x.person_id = n.person_id
  JOIN LATERAL (SELECT DISTINCT ON (users.channel) users.id, users.channel FROM users
                WHERE users.person_id = n.person_id
                ORDER BY users.channel, users.last_login_at DESC NULLS LAST, users.id DESC) u
    ON u.channel = ANY(x.channels)
  RETURNING id
), clearing AS (
  UPDATE accounts SET balance_fen = balance_fen + :paid_fen, updated_at = :now
  WHERE id = :clearing_id AND :paid_fen > 0
  RETURNING balance_fen
)
SELECT (SELECT id FROM s) AS settlement_id,
       (SELECT json_agg(json_build_array(id, balance_fen)) FROM debited) AS debited,
       (SELECT balance_fen FROM clearing) AS clearing_after,
       (SELECT array_agg(id ORDER BY id) FROM d) AS delivery_ids
"""


def _squeezed(sql: str) -> str:
    """SQL without comments and with single spaces (no string literal here holds two spaces or ``--``)."""
    return " ".join(line.split("--", 1)[0].strip() for line in sql.splitlines() if line.split("--", 1)[0].strip())


_WRITE_ALL = text(_squeezed(_WRITE_ALL_SQL))
