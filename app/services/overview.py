"""The console's overview (概览): counts and sums computed by the database (SQL aggregates).

Days are Asia/Shanghai calendar days (SPEC §3). Shanghai has had no daylight-saving time since
1991, so on SQLite a fixed +8 hours gives the same day as PostgreSQL's time-zone conversion.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.policy import SHANGHAI, shanghai_date
from models import Binding, Delivery, Refund, Settlement

DAYS = 30


def _day(session: Session, column: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return func.date(func.timezone("Asia/Shanghai", column))
    return func.date(column, "+8 hours")


def _key(value: Any) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


def overview(session: Session, *, now: datetime, days: int = DAYS) -> dict[str, Any]:
    """Pending reviews; today's and the last ``days`` days' settlements, co-pay and refunds per
    day; notice deliveries by state over the same days."""
    today = shanghai_date(now)
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, time(0), SHANGHAI)
    with session.begin():
        pending = session.scalar(select(func.count()).select_from(Binding)
                                 .where(Binding.status == "pending_review")) or 0
        s_day = _day(session, Settlement.created_at)
        settled = {_key(row.day): row for row in session.execute(
            select(s_day.label("day"), func.count().label("count"),
                   func.coalesce(func.sum(Settlement.copay_fen), 0).label("copay_fen"),
                   func.coalesce(func.sum(Settlement.own_account_fen), 0).label("own_fen"),
                   func.coalesce(func.sum(Settlement.total_fen), 0).label("total_fen"))
            .where(Settlement.created_at >= since).group_by(s_day))}
        r_day = _day(session, Refund.created_at)
        refunded = {_key(row.day): row for row in session.execute(
            select(r_day.label("day"), func.count().label("count"),
                   func.coalesce(func.sum(Refund.amount_fen), 0).label("amount_fen"))
            .where(Refund.created_at >= since).group_by(r_day))}
        deliveries = dict(session.execute(
            select(Delivery.state, func.count()).where(Delivery.created_at >= since).group_by(Delivery.state)
        ).all())
    series = []
    for offset in range(days):
        day = (first + timedelta(days=offset)).isoformat()
        s, r = settled.get(day), refunded.get(day)
        series.append({"day": day, "settlements": int(s.count) if s else 0,
                       "copay_fen": int(s.copay_fen) if s else 0, "own_fen": int(s.own_fen) if s else 0,
                       "total_fen": int(s.total_fen) if s else 0,
                       "refunds": int(r.count) if r else 0, "refund_fen": int(r.amount_fen) if r else 0})
    total = {key: sum(d[key] for d in series) for key in ("settlements", "copay_fen", "refunds", "refund_fen")}
    return {
        "today": series[-1], "days": series, "totals": total, "pending_reviews": int(pending),
        "notices": {state: int(deliveries.get(state, 0))
                    for state in ("sent", "failed", "no_consent", "pending", "sending")},
        "since": first.isoformat(),
    }
