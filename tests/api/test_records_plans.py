"""Records stay flat at any size (issue 13): every deduction-records query is one index range.

The copied columns (owner, beneficiary, year on payments and refund parts) must always agree with
the rows they were copied from, and on PostgreSQL each query variant must be served by its index
in order — with the generic plan that server-side prepared statements switch to, too — so a page
costs the same for an owner with two payments as for one with 200,000.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from app.extensions import app_session
from app.policy import shanghai_date
from app.services import records
from tests.api.test_records import deductions, family  # noqa: F401 — fixtures
from tests.money_helpers import CHILD, OWNER, person_id, refund

pytestmark = pytest.mark.usefixtures("ledger_stays_clean")


def test_copied_columns_match_their_sources(app, client, family):  # noqa: F811
    refund(client, family.settled[0]["settlement_no"], 1_500)
    with app_session() as session, session.begin():
        mismatched = session.execute(text(
            "SELECT count(*) FROM payments p JOIN settlements s ON s.id = p.settlement_id "
            "WHERE p.beneficiary_person_id <> s.beneficiary_person_id")).scalar_one()
        years = session.execute(text("SELECT DISTINCT created_year FROM payments")).scalars().all()
        parts = session.execute(text(
            "SELECT rp.owner_person_id, rp.beneficiary_person_id, rp.created_year, p.owner_person_id, "
            "s.beneficiary_person_id FROM refund_parts rp JOIN payments p ON p.id = rp.payment_id "
            "JOIN settlements s ON s.id = p.settlement_id")).all()
    this_year = shanghai_date(datetime.now(UTC)).year
    assert mismatched == 0 and years == [this_year]
    assert parts and all(r[0] == r[3] and r[1] == r[4] and r[2] == this_year for r in parts)


def test_a_beneficiary_pages_through_what_was_paid_for_them_with_refunds(app, client, family):  # noqa: F811
    refund(client, family.settled[1]["settlement_no"], 1_000)
    this_year = shanghai_date(datetime.now(UTC)).year
    for query in ("?role=beneficiary&limit=1", f"?role=beneficiary&limit=1&year={this_year}"):
        seen, cursor = [], None
        while True:
            page = deductions(client, family.child, query + (f"&cursor={cursor}" if cursor else ""))
            seen += [(i["kind"], i["amount_fen"], i["beneficiary"]["person_id"]) for i in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        child = person_id(app, CHILD)
        assert seen == [("refund", 1_000, child), ("copay", 6_000, child), ("copay", 4_000, child)]
    assert deductions(client, family.child, f"?role=beneficiary&year={this_year - 1}")["items"] == []
    assert person_id(app, OWNER) not in {i["beneficiary"]["person_id"]
                                          for i in deductions(client, family.child, "?role=beneficiary")["items"]}


@pytest.mark.parametrize("variant", records._VARIANTS)
@pytest.mark.parametrize("stream", ["payments", "refunds"])
def test_each_records_query_is_an_ordered_index_range_even_with_a_generic_plan(app, postgres, family, variant,  # noqa: F811
                                                                              stream):
    if not postgres:
        pytest.skip("query plans are PostgreSQL's")
    statement = (records._PAYMENTS if stream == "payments" else records._REFUNDS)[variant]
    role, by_year = variant
    index = f"ix_{'payments' if stream == 'payments' else 'refund_parts'}_{role}" + ("_year" if by_year else "")
    with app_session() as session, session.begin():
        # Tiny tables make a sequential scan cheapest; forbid it to see which index the query can use,
        # and plan it as a reused server-side prepared statement would (the generic plan).
        session.execute(text("SET LOCAL enable_seqscan = off"))
        session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        session.execute(text("PREPARE records_probe AS " + str(statement.compile(
            dialect=session.get_bind().dialect, compile_kwargs={"render_postcompile": True}))
            .replace("%(person_id)s", "$1").replace("%(before)s", "$2").replace("%(count)s", "$3")
            .replace("%(year)s", "$4")))
        args = "1, 9999999, 21" + (", 2026" if by_year else "")
        plan = "\n".join(session.execute(text(f"EXPLAIN EXECUTE records_probe({args})")).scalars())
        session.execute(text("DEALLOCATE records_probe"))
    first_scan = next(line for line in plan.splitlines() if "Scan" in line)
    assert index in first_scan and "Backward" in first_scan, plan
    assert "Sort" not in plan, plan  # the index gives the order: no sort of all of a person's rows
