"""On PostgreSQL a settlement reads its facts in four statements and writes everything in one
(``_apply_in_one_statement``); SQLite runs the plain statements one by one (``_apply``). Both must
write exactly the same rows: this settles one bill each way on PostgreSQL — refunding the first in
between, so that both start from the same balances, cap and limits — and compares every row the
two settlements wrote, column by column (ids and numbers aside; times relative to the settlement's).
It is end to end: switching ``_folded`` off switches the reads back to the plain statements too.
The scenario is a voucher settlement paid by two owners (one capped by a binding limit), with a
receipt and deliveries; the all-cash, card and replay cases are covered by the settlement tests,
which run on both paths (PostgreSQL and SQLite)."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import select, update

from app.extensions import app_session
from app.services import settlements
from app.services.ledger import clearing_account_for, clearing_account_ids
from models import (
    Account,
    Binding,
    BindingUsage,
    CapUsage,
    Delivery,
    Journal,
    LedgerEntry,
    Notice,
    Payment,
    Settlement,
    Voucher,
)
from tests.api.test_settlements import created, family  # noqa: F401 — the fixture
from tests.money_helpers import CHILD, SPOUSE, drug, issue, refund, settle, sign_in

pytestmark = pytest.mark.usefixtures("ledger_stays_clean")

_AWAY = {"id", "settlement_id", "settlement_no", "out_settlement_no", "request_hash", "voucher_id", "notice_id",
         "journal_id", "settled_at", "memo", "movement_key"}


_PER_REQUEST = ("settlement_no", "out_settlement_no", "settled_at", "service_time")


def _plain(row, at: datetime) -> dict:
    """A row's columns without what differs between two settlements; times relative to the settlement's."""
    out = {}
    for key, value in row._mapping.items():
        if key in _AWAY:
            continue
        if isinstance(value, datetime):
            value = (value - at).total_seconds()
        if key in ("content", "response") and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in ("settlement_no", "out_settlement_no", "time",
                                                                 "settled_at", "service_time")}
        out[key] = value
    return out


def _written(app, settlement_no: str) -> dict:
    with app_session() as session, session.begin():
        settlement = session.execute(select(Settlement.__table__).where(
            Settlement.settlement_no == settlement_no)).one()
        sid, at = settlement.id, settlement.created_at
        notices = session.execute(select(Notice.__table__).where(Notice.settlement_id == sid)
                                  .order_by(Notice.kind, Notice.person_id)).all()
        journal = session.execute(select(Journal.__table__).where(Journal.settlement_id == sid,
                                                                  Journal.kind == "settlement")).one()
        clearing = clearing_account_ids(session, settlement.institution_id)
        return {
            "settlement": _plain(settlement, at),
            "voucher_used": session.scalar(select(Voucher.used_at).where(Voucher.id == settlement.voucher_id)) == at,
            "payments": [_plain(r, at) for r in session.execute(
                select(Payment.__table__).where(Payment.settlement_id == sid).order_by(Payment.sequence))],
            "journal": _plain(journal, at) | {"memo": journal.memo == settlement_no},
            # The institution's clearing account is the one the settlement number picks (of 16):
            # compared as "the picked one", since the two settlements' numbers differ.
            "entries": sorted((str(_clearing_or_id(r.account_id, clearing, settlement_no)), r.amount_fen)
                              for r in session.execute(select(LedgerEntry.__table__)
                                                       .where(LedgerEntry.journal_id == journal.id))),
            "accounts": [{k: v for k, v in _plain(r, at).items() if k != "created_at"} for r in session.execute(
                select(Account.__table__).where(Account.id.in_(
                    select(LedgerEntry.account_id).where(LedgerEntry.journal_id == journal.id)),
                    Account.kind != "institution")
                .order_by(Account.id))],
            "notices": [_plain(r, at) | {"movement_key": r.movement_key == f"s{sid}"} for r in notices],
            "deliveries": sorted(
                str(_plain(r, at)) for r in session.execute(select(Delivery.__table__).where(
                    Delivery.notice_id.in_([n.id for n in notices])))),
        }


def _clearing_or_id(account_id: int, clearing: tuple[int, ...], settlement_no: str) -> object:
    if account_id not in clearing:
        return account_id
    assert account_id == clearing_account_for(clearing, settlement_no), "credited another clearing account"
    return "clearing"


def _usage(app, child: int) -> tuple:
    """The child's cap usage and their bindings' usage, rows of 0 left out (a refund leaves them at 0)."""
    with app_session() as session, session.begin():
        cap = session.execute(select(CapUsage.year, CapUsage.used_fen)
                              .where(CapUsage.beneficiary_person_id == child)).all()
        bindings = session.execute(select(BindingUsage.binding_id, BindingUsage.paid_fen)
                                   .join(Binding, Binding.id == BindingUsage.binding_id)
                                   .where(Binding.beneficiary_person_id == child)
                                   .order_by(BindingUsage.binding_id)).all()
    return tuple([tuple(r) for r in rows if r[1]] for rows in (cap, bindings))


def test_the_folded_and_the_plain_writes_write_the_same_rows(app, client, sandbox, family, postgres,  # noqa: F811
                                                             monkeypatch):
    if not postgres:
        pytest.skip("the folded statements are PostgreSQL's")
    # The owner's binding may pay 2,000 a year: a 3,000 bill is split over both parents, each with
    # a binding-usage row; the spouse and the child are signed in, so there are deliveries and a receipt.
    with app_session() as session, session.begin():
        session.execute(update(Binding).where(Binding.id == family.owner_binding).values(yearly_limit_fen=2_000))
    sign_in(client, sandbox, SPOUSE)
    sign_in(client, sandbox, CHILD)
    before = _usage(app, family.child)

    folded = created(settle(client, issue(client, family.owner_token, family.child), [drug(3_000)]))
    assert [p["amount_fen"] for p in folded["payments"]] == [2_000, 1_000]
    first = _written(app, folded["settlement_no"])
    after_first = _usage(app, family.child)
    created(refund(client, folded["settlement_no"], 3_000))
    assert _usage(app, family.child) == before

    monkeypatch.setattr(settlements, "_folded", lambda _session: False)
    plain = created(settle(client, issue(client, family.owner_token, family.child), [drug(3_000)]))
    second = _written(app, plain["settlement_no"])

    assert {k: v for k, v in folded.items() if k not in _PER_REQUEST} == \
        {k: v for k, v in plain.items() if k not in _PER_REQUEST}
    assert first["deliveries"] and any(n["kind"] == "receipt" for n in first["notices"])
    for key in first:
        assert first[key] == second[key], key
    assert _usage(app, family.child) == after_first
