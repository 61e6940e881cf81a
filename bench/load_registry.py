"""Benchmark: ``load-registry`` of N persons (default 100,000) on the configured database.

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python -m bench.load_registry [--persons 100000]

Creates a scratch database on that server (dropped afterwards), loads ``--persons`` N persons (2/3
with personal accounts, N/8 households), then loads the same file again (the idempotent
path), then a newer snapshot with one balance in ten changed, and prints the three times.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, date, datetime, timedelta

from app.security.id_number import make_id_number
from bench.scratch import ScratchDatabase, bench_server


def make_registry(n: int) -> dict:
    people = []
    start = date(1940, 1, 1)
    for i in range(n):
        born = start + timedelta(days=i % 25000)
        people.append(make_id_number("5326" + f"{21 + i % 9:02d}", born, i % 1000))
    # Sequence numbers repeat every 1000 and birth dates every 25000 days: make numbers unique.
    people = list(dict.fromkeys(people))
    return {
        "as_of": datetime.now(UTC).isoformat(),
        "persons": [{"id_number": p, "name": f"参保人{i}", "social_card_no": f"M{i:012d}",
                     "insurance_type": "employee" if i % 3 else "resident", "region_code": p[:6],
                     "status": "active"} for i, p in enumerate(people)],
        "accounts": [{"id_number": p, "balance_fen": 10000 + i} for i, p in enumerate(people) if i % 3],
        "households": [{"a": people[i], "b": people[i + 1], "relationship": "spouse"}
                       for i in range(0, len(people) - 1, 8)],
        "institutions": [],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=100_000, help="the registry's size")
    run(parser.parse_args(argv).persons)


def run(n: int) -> None:
    scratch = ScratchDatabase(bench_server())
    url = scratch.url
    try:
        from app import create_app
        from app.config import Config
        from app.extensions import app_session
        from app.services.registry import load_registry
        from models import Base

        app = create_app(Config.from_env(DATABASE_URL=url))
        Base.metadata.create_all(app.extensions["db.engine"])
        data = json.loads(json.dumps(make_registry(n)))
        with app.app_context():
            pii = app.extensions["domain"].pii
            changed = json.loads(json.dumps(data))
            changed["as_of"] = datetime.now(UTC).isoformat()
            for row in changed["accounts"][::10]:
                row["balance_fen"] += 1  # a newer snapshot: one account in ten moved (registry_sync + stale check)
            for label, registry in (("first load", data), ("second load (no changes)", data),
                                    ("third load (10% of balances changed)", changed)):
                started = time.perf_counter()
                with app_session() as session:
                    report = load_registry(session, pii, registry, datetime.now(UTC))
                elapsed = time.perf_counter() - started
                print(f"{label}: {report.persons} persons, {report.accounts} accounts "
                      f"({report.balance_changes} balances synced, {len(report.stale)} stale), "
                      f"{report.households} households in {elapsed:.1f} s")
        app.extensions["db.engine"].dispose()
    finally:
        scratch.drop()


if __name__ == "__main__":
    main()
