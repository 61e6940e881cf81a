"""The transactional outbox (R15): notices are written in the same transaction as the money.

A settlement or refund calls ``add_money_notices`` before it commits: one notice per person
whose account moved (deduction or refund credit), a receipt for the beneficiary when co-pay
funds were used, and one pending delivery per channel the recipient can be reached on. The
unique keys (movement, person, kind) and (notice, channel) make a second notice or a second
delivery for the same movement impossible. Delivery happens after commit (``notify.dispatch``):
the caller hands the returned delivery ids to ``domain().notifier.committed(...)``; if that
hand-over is lost (crash, Redis down) the rows wait, pending, for the sweeper.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import Session

from models import Delivery, Notice, User
from notify.retry import RETRY_WINDOW

CHANNELS = ("wechat", "alipay")


@dataclass(frozen=True)
class AccountMovement:
    """One account's part of a settlement (``amount_fen`` taken) or refund (given back)."""

    owner_person_id: int
    kind: str  # own | copay
    amount_fen: int
    balance_after_fen: int


@dataclass(frozen=True)
class MoneyEvent:
    """What every notice of one settlement or refund says (values already masked, R17)."""

    settlement_id: int
    settlement_no: str
    beneficiary_person_id: int
    beneficiary_masked_name: str
    institution_name: str
    at: datetime
    refund_id: int | None = None
    # Relationship of the beneficiary to each co-pay owner, e.g. {owner_person_id: "child"}.
    relationships: dict[int, str] | None = None


def receipt_channels(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The channels a beneficiary's receipt is pushed on: those with a receipt template configured."""
    wanted = (("wechat", "WECHAT_TEMPLATE_RECEIPT"), ("alipay", "ALIPAY_TEMPLATE_RECEIPT"))
    return tuple(channel for channel, key in wanted if config.get(key))


# Built once: Core statements on the tables (this runs inside every settlement and refund).
_USERS_OF = (
    select(User.id, User.person_id, User.channel)
    .where(User.person_id.in_(bindparam("person_ids", expanding=True)))
    .order_by(User.last_login_at.asc().nulls_first(), User.id)
)
_INSERT_NOTICES = insert(Notice.__table__).returning(Notice.__table__.c.id, sort_by_parameter_order=True)
_INSERT_DELIVERIES = insert(Delivery.__table__).returning(Delivery.__table__.c.id, sort_by_parameter_order=True)


def _reachable_users(session: Session, person_ids: Collection[int]) -> dict[int, dict[str, int]]:
    """Per person, the most recently signed-in user on each channel."""
    rows = session.execute(_USERS_OF, {"person_ids": list(person_ids)})
    found: dict[int, dict[str, int]] = {}
    for user_id, person_id, channel in rows:
        found.setdefault(person_id, {})[channel] = user_id  # later rows (newer logins) win
    return found


@dataclass(frozen=True)
class NoticeDraft:
    """One notice of a money movement, before it is written: its values and the channels it may go on."""

    kind: str  # deduction | refund | receipt
    person_id: int
    amount_fen: int
    balance_after_fen: int | None
    content: dict[str, Any]
    channels: tuple[str, ...]


def money_notice_drafts(event: MoneyEvent, movements: Sequence[AccountMovement], *,
                        receipt_channels: Collection[str] = ()) -> list[NoticeDraft]:
    """The notices of one money movement (R15): one per person whose account moved, and a receipt
    for the beneficiary when co-pay funds were used in a settlement. Pure: no database."""
    refund = event.refund_id is not None
    per_owner: dict[int, list[AccountMovement]] = {}
    for movement in movements:
        if movement.amount_fen > 0:
            per_owner.setdefault(movement.owner_person_id, []).append(movement)
    copay_total = sum(m.amount_fen for m in movements if m.kind == "copay")
    relationships = event.relationships or {}
    drafts = []
    for owner_id, parts in per_owner.items():
        amount = sum(p.amount_fen for p in parts)
        balance_after = parts[-1].balance_after_fen
        relationship = "self" if owner_id == event.beneficiary_person_id else relationships.get(owner_id)
        drafts.append(NoticeDraft("refund" if refund else "deduction", owner_id, amount, balance_after,
                                  _content(event, amount, balance_after, relationship), CHANNELS))
    if copay_total and not refund:
        drafts.append(NoticeDraft("receipt", event.beneficiary_person_id, copay_total, None,
                                  _content(event, copay_total, None, None), tuple(receipt_channels)))
    return drafts


def add_money_notices(
    session: Session,
    event: MoneyEvent,
    movements: Sequence[AccountMovement],
    *,
    receipt_channels: Collection[str] = (),
) -> list[int]:
    """Write the notices and pending deliveries of one money movement; return the delivery ids.

    Three statements whatever the number of owners: find the recipients' users, insert the
    notices, insert the deliveries. (A settlement on PostgreSQL writes the same rows inside its
    one write statement instead: ``app.services.settlements``.)
    """
    drafts = money_notice_drafts(event, movements, receipt_channels=receipt_channels)
    if not drafts:
        return []
    users = _reachable_users(session, {d.person_id for d in drafts})
    movement_key = f"r{event.refund_id}" if event.refund_id is not None else f"s{event.settlement_id}"
    common = {"settlement_id": event.settlement_id, "refund_id": event.refund_id, "movement_key": movement_key,
              "settlement_no": event.settlement_no, "created_at": event.at}
    connection = session.connection()
    notice_ids = connection.execute(_INSERT_NOTICES, [
        {**common, "kind": d.kind, "person_id": d.person_id, "amount_fen": d.amount_fen,
         "balance_after_fen": d.balance_after_fen, "content": d.content} for d in drafts]).scalars().all()
    rows = [
        {"notice_id": notice_id, "channel": channel, "user_id": user_id, "state": "pending", "attempts": 0,
         "next_attempt_at": event.at, "give_up_at": event.at + RETRY_WINDOW, "created_at": event.at,
         "updated_at": event.at}
        for notice_id, draft in zip(notice_ids, drafts, strict=True)
        for channel, user_id in users.get(draft.person_id, {}).items()
        if channel in draft.channels
    ]
    if not rows:
        return []
    return list(connection.execute(_INSERT_DELIVERIES, rows).scalars())


def _content(event: MoneyEvent, amount_fen: int, balance_after_fen: int | None,
             relationship: str | None) -> dict[str, Any]:
    return {
        "beneficiary": event.beneficiary_masked_name,
        "relationship": relationship,
        "institution": event.institution_name,
        "amount_fen": amount_fen,
        "balance_after_fen": balance_after_fen,
        "time": event.at.isoformat(),
        "settlement_no": event.settlement_no,
    }
