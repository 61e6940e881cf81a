"""Invariants under random sequences of operations (hypothesis ``RuleBasedStateMachine``), on PostgreSQL.

The machine drives the services themselves — the same functions the blueprints call — with a
simulated clock that starts on the evening of 31 December (Asia/Shanghai) and moves forward in
steps of minutes to hours, so every run crosses a year boundary (the annual cap starts again).

Operations: bind (at the window), unbind, suspend (owner, binding or beneficiary) and lift, issue a
voucher (own or 亲情码) and settle with it at a local hospital, a pharmacy or an off-site hospital,
replay a settlement, re-use a used voucher, refund (part, all, too much), advance the clock, reload
the registry (new balances through the registry service).

After every step: balances ≥ 0; ``verify_ledger`` clean (ledger sums equal balances, journals
balance, cap and per-binding usage equal the ledger); R6 (a co-pay payment only through a binding
active and effective at the service time), R7 (own account first; payers by balance, highest
first), R8 (cap), R9 (eligible amounts), R10 (off-site without filing: all cash), R11 (no co-pay
through a suspended owner, binding or beneficiary), R12 (a voucher is used once), R13 (a replay
returns the stored body, no second row), R14 (refunds at most what was paid, in reverse order,
cap given back); R15: exactly one notice per movement per person, one delivery per reachable
channel, a receipt when co-pay was used.
"""

from __future__ import annotations

import os
import secrets
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import func, select, text

from app import errors
from app.demo import CHILD, NEIGHBOUR, OWNER, PARENT, SPOUSE, demo_registry
from app.extensions import app_session
from app.services import bindings as binding_service
from app.services import suspensions as suspension_service
from app.services.auth import Principal
from app.services.ledger_check import verify_ledger
from app.services.refunds import refund_settlement
from app.services.registry import load_registry
from app.services.settlements import SettlementRequest, request_hash, settle
from app.services.vouchers import issue_voucher
from models import (
    Account,
    Base,
    Binding,
    CapUsage,
    Delivery,
    Notice,
    Payment,
    Person,
    Refund,
    RefundPart,
    Settlement,
    StaffUser,
    Suspension,
    User,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(not os.environ.get("TEST_DATABASE_URL"), reason="the invariant machine runs on PostgreSQL"),
]

SHANGHAI = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 12, 31, 18, 0, tzinfo=SHANGHAI).astimezone(UTC)
EXAMPLES = int(os.environ.get("INVARIANT_EXAMPLES", "25"))
STEPS = int(os.environ.get("INVARIANT_STEPS", "100"))
MIN_STEPS = 2000
PEOPLE = {p["id_number"]: p for p in demo_registry()["persons"]}
PAIRS = [(OWNER, SPOUSE, "spouse"), (OWNER, CHILD, "child"), (OWNER, PARENT, "parent"), (SPOUSE, CHILD, "child")]
OWNERS = (OWNER, SPOUSE, NEIGHBOUR)
INSTITUTIONS = {"local": "H5326001", "pharmacy": "P5326002", "offsite": "H3703001"}
CAP = 200_000
ELIGIBLE = ("drug", "consultation", "examination", "treatment", "tcm_treatment", "medical_consumable")
# SPEC R11: a binding's suspension holds for the pair (unbinding and binding again does not lift it).
R11_BY_PAIR = True
COUNTS = {"steps": 0, "settled": 0, "refunds": 0, "replays": 0, "reloads": 0, "years": set()}


def _item(category: str, amount: int, in_catalogue: bool) -> dict[str, Any]:
    return {"code": "X1", "name": "项目", "category": category, "in_catalogue": in_catalogue, "amount_fen": amount}


def _eligible(item: dict[str, Any], institution_kind: str) -> bool:
    if institution_kind == "pharmacy":
        return item["category"] == "drug" and item["in_catalogue"]
    if item["category"] == "drug":
        return item["in_catalogue"]
    return item["category"] in ELIGIBLE


items_strategy = st.lists(
    st.builds(_item, st.sampled_from([*ELIGIBLE, "cosmetic", "daily_goods"]),
              st.integers(min_value=1, max_value=160_000), st.booleans()),
    min_size=1, max_size=3)


class CopayMachine(RuleBasedStateMachine):
    app: Any = None  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.domain = self.app.extensions["domain"]
        self.now = START
        self.settled: list[dict[str, Any]] = []  # {"no", "inst", "request", "body"}
        self.used_vouchers: list[tuple[str, str]] = []  # (code, institution)
        self.suspension_ids: list[int] = []
        self.checked_settlements = 0
        self.checked_refunds = 0

    # --- set-up -----------------------------------------------------------------------------------

    @initialize()
    def fresh_world(self) -> None:
        engine = self.app.extensions["db.engine"]
        tables = ", ".join(t.name for t in reversed(Base.metadata.sorted_tables))
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        self.domain.institutions.clear()
        from app.demo import seed_demo

        with app_session() as session:
            seed_demo(session, self.domain.pii, self.now)
        with app_session() as session, session.begin():
            self.person = {n: session.scalar(select(Person.id).where(
                Person.id_number_bidx == self.domain.pii.blind_index(n, kind="id_number"))) for n in PEOPLE}
            staff = dict(session.execute(select(StaffUser.role, StaffUser.id)).all())
            self.window = Principal(kind="staff", id=staff["window"], role="window")
            self.admin = Principal(kind="staff", id=staff["admin"], role="admin")
            self.users: dict[str, int] = {}
            for number, channels in ((OWNER, ("wechat",)), (SPOUSE, ("wechat", "alipay")), (CHILD, ("wechat",))):
                for channel in channels:
                    ids = ({"wechat_openid": "o" + secrets.token_hex(12)} if channel == "wechat"
                           else {"alipay_user_id": "2088" + f"{secrets.randbelow(10**12):012d}"})
                    user = User(channel=channel, person_id=self.person[number], verified_at=self.now,
                                last_login_at=self.now, created_at=self.now, **ids)
                    session.add(user)
                    session.flush()
                    self.users.setdefault(number, user.id)
            self.institution = {}
        for key, code in INSTITUTIONS.items():
            with app_session() as session:
                self.institution[key] = self.domain.institutions._lookup(session, code, fresh=True).identity
        for pair in PAIRS:  # the family starts bound; rules unbind, suspend and bind again
            self.bind(pair)

    # --- rules ------------------------------------------------------------------------------------

    @rule(pair=st.sampled_from(PAIRS))
    def bind(self, pair: tuple[str, str, str]) -> None:
        owner, member, relationship = pair
        current = self.domain.pledges.current()
        person = PEOPLE[member]
        try:
            with app_session() as session:
                binding_service.bind_member_at_window(
                    session, pii=self.domain.pii, policy=self.domain.policy, pledges=self.domain.pledges,
                    signer=self.domain.pledge_signer, caller=self.window, owner_id_number=owner,
                    beneficiary={"name": person["name"], "id_number": member,
                                 "social_card_no": person["social_card_no"]},
                    relationship=relationship, proof_document_ids=[],
                    pledge={"version": current.version, "sha256": current.sha256, "agreed": True},
                    now=self.now, ip="127.0.0.1")
        except (errors.AlreadyBound, errors.TooManyBindings):
            pass

    @rule(data=st.data())
    def unbind(self, data: st.DataObject) -> None:
        live = self._bindings(("active", "suspended"))
        if not live:
            return
        try:
            with app_session() as session:
                binding_service.unbind_member(session, pii=self.domain.pii, caller=self.window,
                                              binding_id=data.draw(st.sampled_from(live)), reason="窗口解绑",
                                              now=self.now, ip="127.0.0.1")
        except errors.InvalidState:
            pass

    @rule(scope=st.sampled_from(["owner", "binding", "beneficiary"]), data=st.data())
    def suspend(self, scope: str, data: st.DataObject) -> None:
        target: dict[str, Any] = {}
        if scope == "owner":
            target["owner_id_number"] = data.draw(st.sampled_from(OWNERS))
        elif scope == "beneficiary":
            target["beneficiary_id_number"] = data.draw(st.sampled_from([SPOUSE, CHILD, PARENT]))
        else:
            live = self._bindings(("active", "suspended"))
            if not live:
                return
            target["binding_id"] = data.draw(st.sampled_from(live))
        try:
            with app_session() as session:
                made = suspension_service.suspend_copay(session, pii=self.domain.pii, caller=self.admin,
                                                        reason="套现嫌疑", now=self.now, ip="127.0.0.1", **target)
            self.suspension_ids.append(made["id"])
        except (errors.InvalidState, errors.NotFound):
            pass

    @precondition(lambda self: self.suspension_ids)
    @rule(data=st.data())
    def lift(self, data: st.DataObject) -> None:
        suspension_id = data.draw(st.sampled_from(self.suspension_ids))
        try:
            with app_session() as session:
                suspension_service.lift_suspension(session, pii=self.domain.pii, caller=self.admin,
                                                   suspension_id=suspension_id, now=self.now, ip="127.0.0.1")
        except errors.InvalidState:
            pass

    @rule(holder=st.sampled_from([OWNER, SPOUSE, CHILD]), member=st.sampled_from([None, SPOUSE, CHILD, PARENT]),
          where=st.sampled_from(["local", "local", "local", "pharmacy", "offsite"]), items=items_strategy,
          back=st.integers(min_value=0, max_value=6 * 3600))
    def settle_with_voucher(self, holder: str, member: str | None, where: str, items: list[dict[str, Any]],
                            back: int) -> None:
        try:
            with app_session() as session:
                voucher = issue_voucher(session, self.domain.pii, self.domain.money.vouchers, self.users[holder],
                                        self.person[holder], None if member in (None, holder) else self.person[member],
                                        self.now)
        except (errors.BindingNotActive, errors.NotFound):
            return
        service_time = self.now - timedelta(seconds=back)
        body = {"out_settlement_no": "OUT" + secrets.token_hex(6), "voucher_code": voucher["code"], "items": items,
                "service_time": service_time.isoformat()}
        request = SettlementRequest.from_body({**body, "service_time": service_time}, body)
        outcome = self._settle(where, request)
        assert outcome.status == 201, outcome.body
        self.settled.append({"no": outcome.body["settlement_no"], "where": where, "request": request,
                             "body": outcome.body})
        self.used_vouchers.append((voucher["code"], where))
        COUNTS["settled"] += 1
        COUNTS["years"].add(self.now.astimezone(SHANGHAI).year)

    @rule(holder=st.sampled_from([OWNER, SPOUSE, CHILD]), member=st.sampled_from([None, SPOUSE, CHILD, PARENT]),
          items=items_strategy, back=st.integers(min_value=0, max_value=3600))
    def settle_locally(self, holder: str, member: str | None, items: list[dict[str, Any]], back: int) -> None:
        """Settling is what most steps should do: a second rule doubles its share."""
        self.settle_with_voucher(holder, member, "local", items, back)

    @precondition(lambda self: self.settled)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """R13: the same request again returns the stored status and body, and settles nothing."""
        done = data.draw(st.sampled_from(self.settled))
        before = self._count(Settlement)
        outcome = self._settle(done["where"], done["request"])
        assert (outcome.status, outcome.body) == (201, done["body"])
        assert self._count(Settlement) == before
        COUNTS["replays"] += 1

    @precondition(lambda self: self.used_vouchers)
    @rule(data=st.data())
    def reuse_voucher(self, data: st.DataObject) -> None:
        """R12: a used voucher, in a new request, is refused."""
        code, where = data.draw(st.sampled_from(self.used_vouchers))
        body = {"out_settlement_no": "OUT" + secrets.token_hex(6), "voucher_code": code,
                "items": [_item("drug", 100, True)]}
        with pytest.raises((errors.VoucherUsed, errors.VoucherExpired)):
            self._settle(where, SettlementRequest.from_body(dict(body), body))

    @precondition(lambda self: self.settled)
    @rule(data=st.data(), share=st.sampled_from([0.3, 0.5, 1.0, 1.5]))
    def refund(self, data: st.DataObject, share: float) -> None:
        done = data.draw(st.sampled_from(self.settled))
        with app_session() as session, session.begin():
            row = session.scalar(select(Settlement).where(Settlement.settlement_no == done["no"]))
            left = row.total_fen - row.refunded_fen
        amount = max(1, int(left * share)) if left else 1
        body = {"out_refund_no": "RF" + secrets.token_hex(6), "amount_fen": amount}
        try:
            with app_session() as session:
                outcome = refund_settlement(session, self.domain.money, self.institution[done["where"]], done["no"],
                                            body["out_refund_no"], amount, request_hash(body), self.now)
        except errors.RefundExceedsPaid:
            assert amount > left
            return
        assert amount <= left and outcome.status == 201
        COUNTS["refunds"] += 1

    @rule(minutes=st.integers(min_value=5, max_value=16 * 60))
    def advance_clock(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)

    @rule(balances=st.lists(st.integers(min_value=0, max_value=400_000), min_size=3, max_size=3))
    def reload_registry(self, balances: list[int]) -> None:
        """New balances from the core system, through the registry service (its journals keep the ledger)."""
        before = self._balances()
        data: dict[str, Any] = {"persons": [], "households": [], "institutions": [],
                                "accounts": [{"id_number": n, "balance_fen": b} for n, b in zip(OWNERS, balances,
                                                                                                 strict=True)]}
        data["as_of"] = self.now.isoformat()  # when the core system took the snapshot (SPEC §7)
        with app_session() as session:
            load_registry(session, self.domain.pii, data, self.now)
        after = self._balances()
        for number, wanted in zip(OWNERS, balances, strict=True):
            # the new balance, or (an account that moved after the snapshot) left alone
            assert after[number] in (wanted, before[number])
        COUNTS["reloads"] += 1

    # --- invariants ---------------------------------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        COUNTS["steps"] += 1
        with app_session() as session:
            report = verify_ledger(session)
        assert report.clean, report.differences
        with app_session() as session, session.begin():
            assert session.scalar(select(func.min(Account.balance_fen)).where(Account.kind == "personal")) >= 0
            assert (session.scalar(select(func.max(CapUsage.used_fen))) or 0) <= CAP  # R8, no chronic extra here
            rows = list(session.scalars(select(Settlement).where(Settlement.id > self.checked_settlements)
                                        .order_by(Settlement.id)))
            for row in rows:
                self._check_settlement(session, row)
                self.checked_settlements = row.id
            refunds = list(session.scalars(select(Refund).where(Refund.id > self.checked_refunds).order_by(Refund.id)))
            for refund in refunds:
                self._check_refund(session, refund)
                self.checked_refunds = refund.id

    # --- checks ---------------------------------------------------------------------------------------

    def _check_settlement(self, session: Any, row: Settlement) -> None:
        institution = next(i for i in self.institution.values() if i.id == row.institution_id)
        eligible = sum(i["amount_fen"] for i in row.items if _eligible(i, institution.kind))
        assert row.eligible_fen == eligible  # R9
        assert row.own_account_fen + row.copay_fen + row.cash_fen == row.total_fen
        assert row.own_account_fen + row.copay_fen <= row.eligible_fen
        payments = list(session.scalars(select(Payment).where(Payment.settlement_id == row.id)
                                        .order_by(Payment.sequence)))
        if institution.region_code[:4] != "5326":  # R10: off-site, no filing in this world
            assert row.own_account_fen == row.copay_fen == 0 and not payments
        own = [p for p in payments if p.kind == "own"]
        copay = [p for p in payments if p.kind == "copay"]
        assert sum(p.amount_fen for p in own) == row.own_account_fen
        assert sum(p.amount_fen for p in copay) == row.copay_fen
        if own and copay:  # R7: own account first, and emptied before anyone else pays
            assert own[0].sequence < copay[0].sequence and own[0].balance_after_fen == 0
        if copay:  # (checked right after the step that settled: nothing has moved the account since)
            left = session.scalar(select(Account.balance_fen).where(
                Account.person_id == row.beneficiary_person_id, Account.kind == "personal"))
            assert not left, f"co-pay while the beneficiary's own account still holds {left}"
        before = [p.balance_after_fen + p.amount_fen for p in copay]
        assert before == sorted(before, reverse=True)  # R7 balance_desc
        for payment in copay:  # R6, R11
            binding = session.get(Binding, payment.binding_id)
            assert binding.beneficiary_person_id == row.beneficiary_person_id
            assert binding.status == "active" and binding.effective_at <= row.service_time, (binding.status,)
            live = select(Suspension.id).where(Suspension.lifted_at.is_(None), Suspension.starts_at <= row.created_at)
            same_binding = Suspension.binding_id == binding.id
            if R11_BY_PAIR:  # a suspension holds for the pair, across unbinding and binding again
                same_binding = Suspension.binding_id.in_(select(Binding.id).where(
                    Binding.owner_person_id == binding.owner_person_id,
                    Binding.beneficiary_person_id == binding.beneficiary_person_id))
            assert session.scalar(live.where(
                ((Suspension.scope == "owner") & (Suspension.person_id == payment.owner_person_id))
                | ((Suspension.scope == "beneficiary") & (Suspension.person_id == row.beneficiary_person_id))
                | ((Suspension.scope == "binding") & same_binding))) is None
        self._check_notices(session, f"s{row.id}", "deduction", {p.owner_person_id for p in payments if p.amount_fen},
                            receipt=row.beneficiary_person_id if row.copay_fen else None)

    def _check_refund(self, session: Any, refund: Refund) -> None:
        settlement = session.get(Settlement, refund.settlement_id)
        parts = list(session.scalars(select(RefundPart).where(RefundPart.refund_id == refund.id)))
        assert refund.cash_fen + sum(p.amount_fen for p in parts) == refund.amount_fen
        payments = list(session.scalars(select(Payment).where(Payment.settlement_id == settlement.id)
                                        .order_by(Payment.sequence)))
        assert settlement.refunded_fen <= settlement.total_fen
        refunded_cash = session.scalar(select(func.coalesce(func.sum(Refund.cash_fen), 0))
                                       .where(Refund.settlement_id == settlement.id))
        assert refunded_cash <= settlement.cash_fen
        if any(p.refunded_fen for p in payments):  # R14: cash first, then payers from the last one back
            assert refunded_cash == settlement.cash_fen
        touched = [i for i, p in enumerate(payments) if p.refunded_fen]
        if touched:
            assert all(p.refunded_fen == p.amount_fen for p in payments[touched[0] + 1:])
        by_id = {p.id: p for p in payments}
        assert refund.cap_restored_fen == sum(p.amount_fen for p in parts if by_id[p.payment_id].kind == "copay")
        payers = {by_id[p.payment_id].owner_person_id for p in parts if p.amount_fen}
        self._check_notices(session, f"r{refund.id}", "refund", payers, receipt=None)

    def _check_notices(self, session: Any, movement: str, kind: str, payers: set[int], receipt: int | None) -> None:
        """R15: one notice per movement per person (and a receipt when co-pay was used), one delivery per
        channel the person can be reached on."""
        notices = list(session.scalars(select(Notice).where(Notice.movement_key == movement)))
        assert sorted(n.person_id for n in notices if n.kind == kind) == sorted(payers)
        assert [n.person_id for n in notices if n.kind == "receipt"] == ([receipt] if receipt else [])
        reachable: dict[int, set[str]] = defaultdict(set)
        for person_id, channel in session.execute(select(User.person_id, User.channel)
                                                  .where(User.person_id.is_not(None))):
            reachable[person_id].add(channel)
        for notice in notices:
            channels = sorted(session.scalars(select(Delivery.channel).where(Delivery.notice_id == notice.id)))
            if notice.kind == "receipt":
                assert len(channels) == len(set(channels))
            else:
                assert channels == sorted(reachable[notice.person_id]), (notice.kind, channels)

    # --- helpers ------------------------------------------------------------------------------------

    def _settle(self, where: str, request: SettlementRequest) -> Any:
        with app_session() as session:
            return settle(session, self.domain.money, self.institution[where], request, self.now)

    def _bindings(self, statuses: tuple[str, ...]) -> list[int]:
        with app_session() as session, session.begin():
            return list(session.scalars(select(Binding.id).where(Binding.status.in_(statuses)).order_by(Binding.id)))

    def _balances(self) -> dict[str, int]:
        with app_session() as session, session.begin():
            return {n: session.scalar(select(Account.balance_fen).where(Account.person_id == self.person[n]))
                    for n in OWNERS}

    def _count(self, model: Any) -> int:
        with app_session() as session, session.begin():
            return session.scalar(select(func.count()).select_from(model))


def test_invariants_hold_under_random_operations(app):
    from hypothesis.stateful import run_state_machine_as_test

    CopayMachine.app = app
    for key in COUNTS:
        COUNTS[key] = set() if key == "years" else 0
    # Hypothesis ends some runs early, so the step count of a batch varies: run batches until the
    # steps reach MIN_STEPS (each batch is a fresh hypothesis run of ``EXAMPLES // 3`` examples).
    for _batch in range(12):
        run_state_machine_as_test(CopayMachine, settings=settings(
            max_examples=max(1, EXAMPLES // 3), stateful_step_count=STEPS, deadline=None, derandomize=False,
            suppress_health_check=list(HealthCheck), database=None))
        if COUNTS["steps"] >= max(MIN_STEPS, EXAMPLES * STEPS * 0.85):
            break
    print(f"\nstate machine: {COUNTS['steps']} steps, {COUNTS['settled']} settlements, {COUNTS['refunds']} refunds, "
          f"{COUNTS['replays']} replays, {COUNTS['reloads']} registry reloads, years {sorted(COUNTS['years'])}")
    assert COUNTS["steps"] >= MIN_STEPS
    assert COUNTS["settled"] >= 50 and COUNTS["refunds"] >= 10  # the money rules were really exercised
    assert COUNTS["years"] == {2026, 2027}  # the runs crossed the year boundary
