"""Benchmark: the console's person look-up (参保人查询) on a 100,000-person registry.

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python -m bench.console_lookup [--persons 100000] [--samples 400]

Creates a scratch database on that server (dropped afterwards), loads ``--persons`` N persons
(``bench.load_registry``'s registry: 2/3 with personal accounts, N/8 households) and an active
window binding for every household pair, signs a clerk in through the console's own form (password
+ TOTP), then looks up ``--samples`` random persons by ID number: once through the whole page
(``POST /console/persons``: session check, CSRF, blind index, every section of the page, audit
row, template) and once through the service alone. Prints p50/p90/p99 of both.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import time
from datetime import UTC, datetime, timedelta

import pyotp
from sqlalchemy import event, insert, select

from bench.load_registry import make_registry
from bench.scratch import ScratchDatabase, bench_server


def _percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return (f"p50 {statistics.median(ordered):.1f} ms · p90 {pick(0.90):.1f} ms · p99 {pick(0.99):.1f} ms · "
            f"max {ordered[-1]:.1f} ms (n={len(ordered)})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=100_000, help="the registry's size")
    parser.add_argument("--samples", type=int, default=int(os.environ.get("SAMPLES", "400")),
                        help="persons looked up (default: $SAMPLES or 400)")
    options = parser.parse_args(argv)
    run(options.persons, options.samples)


def run(n: int, samples: int) -> None:
    scratch = ScratchDatabase(bench_server())
    url = scratch.url
    try:
        from app import create_app
        from app.config import Config
        from app.extensions import app_session
        from app.services import person_lookup
        from app.services.auth import Principal
        from app.services.console_auth import set_console_credentials
        from app.services.registry import load_registry
        from app.services.staff_accounts import create_staff
        from models import Base, Binding, Person

        app = create_app(Config.from_env(DATABASE_URL=url, RATE_LIMIT_PER_IP="off", RATE_LIMIT_PER_USER="off",
                                        LOG_LEVEL="WARNING"))
        Base.metadata.create_all(app.extensions["db.engine"])
        data = make_registry(n)
        with app.app_context():
            domain = app.extensions["domain"]
            now = datetime.now(UTC)
            started = time.perf_counter()
            with app_session() as session:
                load_registry(session, domain.pii, data, now)
            print(f"registry: {len(data['persons'])} persons loaded in {time.perf_counter() - started:.1f} s")
            with app_session() as session, session.begin():
                ids = dict(session.execute(select(Person.id_number_bidx, Person.id)).all())
                rows = [{"owner_person_id": ids[domain.pii.blind_index(h["a"], kind="id_number")],
                         "beneficiary_person_id": ids[domain.pii.blind_index(h["b"], kind="id_number")],
                         "relationship": "spouse", "channel": "window", "status": "active", "effective_at": now,
                         "relationship_confirmed": True, "created_at": now} for h in data["households"]]
                session.execute(insert(Binding), rows)
            print(f"bindings: {len(rows)} active")
            with app_session() as session:
                create_staff(session, "bench-clerk", "window", now)
                secret = set_console_credentials(session, domain.pii, "bench-clerk", "bench console password", now)
        client = app.test_client()
        page = client.get("/console/login").get_data(as_text=True)
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
        signed = client.post("/console/login", data={"csrf_token": token, "username": "bench-clerk",
                                                     "password": "bench console password",
                                                     "code": pyotp.TOTP(secret).at(datetime.now(UTC) - timedelta(0))})
        assert signed.status_code == 303, signed.status_code
        page = client.get("/console/persons").get_data(as_text=True)
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
        sample = random.Random(12).sample([p["id_number"] for p in data["persons"]], samples)
        for number in sample[:20]:  # warm up caches and the connection pool
            client.post("/console/persons", data={"csrf_token": token, "id_number": number})
        page_ms = []
        for number in sample:
            started = time.perf_counter()
            response = client.post("/console/persons", data={"csrf_token": token, "id_number": number})
            page_ms.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200 and number not in response.get_data(as_text=True)
        print(f"POST /console/persons (whole page): {_percentiles(page_ms)}")
        with app.app_context():
            domain = app.extensions["domain"]
            caller = Principal(kind="staff", id=1, role="window")
            service_ms = []
            statements = [0]
            engine = app.extensions["db.engine"]
            count = lambda *_args: statements.__setitem__(0, statements[0] + 1)  # noqa: E731
            event.listen(engine, "before_cursor_execute", count)
            for number in sample:
                with app_session() as session:
                    started = time.perf_counter()
                    person_lookup.look_up_person(session, pii=domain.pii, policy=domain.policy, caller=caller,
                                                 id_number=number, now=datetime.now(UTC))
                    service_ms.append((time.perf_counter() - started) * 1000)
        event.remove(engine, "before_cursor_execute", count)
        print(f"person_lookup.look_up_person (service):   {_percentiles(service_ms)}; "
              f"{statements[0] / len(sample):.1f} SQL statements per look-up")
        app.extensions["db.engine"].dispose()
    finally:
        scratch.drop()


if __name__ == "__main__":
    main()
