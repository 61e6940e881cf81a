"""``make bench-records``: records pages at 10^4, 10^6 and 10^7 settlement rows — do they stay flat?

    .venv/bin/python -m bench.records [--sizes 10000,1000000,10000000] [--requests 200]

For each size it makes a scratch PostgreSQL database on ``BENCH_DATABASE_URL`` (dropped after),
builds the schema, loads a few real persons (a heavy owner, an ordinary owner with a child, filler
owners) through ``load-registry``, then writes the bulk with SQL (``generate_series``, not the API):
N vouchers, N settlements and N payments (a fifth of them, at most 200,000, the heavy owner's;
the rest spread over the filler owners and their children, over three years), 10,001 partial refunds
of the heavy owner's payments, a refund for the ordinary owner, and N/10 notices. Then, in this
process (the app's test client over a real pooled engine, so psycopg switches to server-side
prepared statements after five runs, as in production), it times ``--requests`` requests of each:

- ``GET /records/deductions`` of the heavy owner: first page, and a page ~100,000 rows deep by cursor
  (at 10^4: half-way), as owner; of the child as beneficiary; of the heavy owner for an older year;
- the ordinary owner's deductions, ``/records/authorizations``, ``/quota``, ``/notifications``.

It prints p50/p99 per size and the ratio of each p99 to the smallest size's (target: ≤ 1.5×).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import time
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import insert, select, text

from app.security.id_number import make_id_number
from bench.scratch import ScratchDatabase, bench_redis, bench_server

FILLERS = 200


def _key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def build(url: str, n: int) -> tuple[object, dict[str, object]]:
    """The app over a fresh database holding ``n`` settlements; returns the app and who to ask as."""
    from app import create_app
    from app.config import Config
    from app.extensions import app_session
    from app.services.auth import token_hash
    from app.services.registry import load_registry
    from models import AuthToken, Base, Binding, Person, User

    env = {**os.environ, "DATABASE_URL": url, "SECRET_KEY": "bench", "PII_KEY": _key(), "VOUCHER_KEY": _key(),
           "PLEDGE_SIGNING_KEY": _key(), "RATE_LIMIT_PER_USER": "off", "RATE_LIMIT_PER_IP": "off",
           "LOG_LEVEL": "WARNING",
           # RQ hand-over (nothing is enqueued here): no in-process notifier threads outliving the database.
           "REDIS_URL": bench_redis()}
    app = create_app(Config.from_env(env=env))
    engine = app.extensions["db.engine"]
    Base.metadata.create_all(engine)
    domain = app.extensions["domain"]
    now = datetime.now(UTC)
    people = {"heavy": make_id_number("532621", date(1960, 1, 1), 111),
              "ordinary": make_id_number("532621", date(1961, 1, 1), 112),
              "child": make_id_number("532621", date(2010, 1, 1), 113)}
    fillers = [make_id_number("532621", date(1950, 1, 1) + timedelta(days=i), 200 + i % 700) for i in range(FILLERS)]
    kids = [make_id_number("532621", date(2000, 1, 1) + timedelta(days=i), 200 + i % 700) for i in range(FILLERS)]
    registry = {
        "as_of": datetime.now(UTC).isoformat(),  # a snapshot taken now (load-registry requires it)
        "persons": [{"id_number": v, "name": f"人{i}", "social_card_no": f"R{i:010d}", "insurance_type": "employee",
                     "region_code": "532621", "status": "active"}
                    for i, v in enumerate([*people.values(), *fillers, *kids])],
        "accounts": [{"id_number": v, "balance_fen": 10**12} for v in [people["heavy"], people["ordinary"], *fillers]],
        "households": [],
        "institutions": [{"code": "HREC01", "name": "记录医院", "kind": "hospital", "region_code": "532601",
                          "designated": True, "api_secret": "records-bench-secret-0123456789"}],
    }
    with app.app_context():
        with app_session() as session:
            load_registry(session, domain.pii, registry, now)
        with app_session() as session, session.begin():
            ids = dict(session.execute(select(Person.id_number_bidx, Person.id)).all())

            def pid(number: str) -> int:
                return ids[domain.pii.blind_index(number, kind="id_number")]

            heavy, ordinary, child = pid(people["heavy"]), pid(people["ordinary"]), pid(people["child"])
            filler_ids, kid_ids = [pid(f) for f in fillers], [pid(k) for k in kids]
            for owner in (heavy, ordinary):
                session.execute(insert(Binding).values(
                    owner_person_id=owner, beneficiary_person_id=child, relationship="child", channel="window",
                    status="active", effective_at=now - timedelta(days=1200), relationship_confirmed=True,
                    created_at=now - timedelta(days=1200)))
            tokens = {}
            for name, person in (("heavy", heavy), ("ordinary", ordinary), ("child", child)):
                user_id = session.execute(insert(User).values(
                    channel="wechat", wechat_openid=f"o-rec-{name}", person_id=person, verified_at=now,
                    created_at=now).returning(User.id)).scalar_one()
                tokens[name] = "at_" + secrets.token_urlsafe(32)
                session.execute(insert(AuthToken).values(
                    kind="access", token_hash=token_hash(tokens[name]), user_id=user_id,
                    chain_id=secrets.token_hex(16), expires_at=now + timedelta(days=1), created_at=now))
        accounts = dict(engine.connect().execute(text("SELECT person_id, id FROM accounts WHERE person_id IS NOT NULL"))
                        .all())
    heavy_rows = min(200_000, n // 5)
    started = time.monotonic()
    fill(engine, n, heavy_rows, heavy, ordinary, child, filler_ids, kid_ids, accounts)
    print(f"  {n:>10,} settlements written in {time.monotonic() - started:.0f} s", flush=True)
    return app, {"tokens": tokens, "heavy_rows": heavy_rows, "child": child}


def fill(engine, n: int, heavy_rows: int, heavy: int, ordinary: int, child: int, fillers: list[int],
         kids: list[int], accounts: dict[int, int]) -> None:
    """The bulk, in SQL. Row i: the heavy owner's when i % (n // heavy_rows) == 0 (spread through
    time like a real heavy user), the ordinary owner's for 20 rows, else a filler's. Three years back."""
    every = max(1, n // max(1, heavy_rows))
    params = {"n": n, "every": every, "heavy": heavy, "ordinary": ordinary, "child": child,
              "fillers": fillers, "kids": kids, "heavy_acct": accounts[heavy], "ordinary_acct": accounts[ordinary],
              "filler_accts": [accounts[f] for f in fillers], "nf": len(fillers),
              "start": datetime.now(UTC) - timedelta(days=3 * 365), "span": 3 * 365 * 86400 - 3600}
    bulk = ("vouchers", "settlements", "payments", "refund_parts", "notices")
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        # A bulk load: foreign-key triggers off for this transaction (the rows are consistent by
        # construction) and the plain indexes built once at the end instead of row by row.
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        indexes = conn.execute(text(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = 'public' "
            "AND i.tablename = ANY(:tables) AND NOT EXISTS (SELECT 1 FROM pg_constraint c "
            "WHERE c.conname = i.indexname)"), {"tables": list(bulk)}).all()
        for name, _definition in indexes:
            conn.execute(text(f'DROP INDEX "{name}"'))
        conn.execute(text("""
            CREATE TEMP TABLE plan ON COMMIT DROP AS
            SELECT g AS i,
                   CASE WHEN g % :every = 0 THEN :heavy
                        WHEN g % 50000 = 7 THEN :ordinary
                        ELSE (:fillers)[1 + g % :nf] END AS owner,
                   CASE WHEN g % :every = 0 OR g % 50000 = 7 THEN :child ELSE (:kids)[1 + g % :nf] END AS kid,
                   CASE WHEN g % :every = 0 THEN :heavy_acct
                        WHEN g % 50000 = 7 THEN :ordinary_acct
                        ELSE (:filler_accts)[1 + g % :nf] END AS account,
                   CAST(:start AS timestamptz) + make_interval(secs => (:span * g::float8 / :n)) AS at
            FROM generate_series(1, :n) g"""), params)
        conn.execute(text("""
            INSERT INTO vouchers (id, code_hash, person_id, holder_person_id, expires_at, used_at, created_at)
            OVERRIDING SYSTEM VALUE
            SELECT i, md5(i::text) || md5('v' || i::text), kid, owner, at + interval '1 hour', at, at FROM plan"""))
        conn.execute(text("""
            INSERT INTO settlements (id, settlement_no, institution_id, out_settlement_no, request_hash, voucher_id,
                beneficiary_person_id, service_time, status, total_fen, eligible_fen, own_account_fen, copay_fen,
                cash_fen, refunded_fen, items, reasons, response, created_at)
            OVERRIDING SYSTEM VALUE
            SELECT i, 'S' || lpad(i::text, 20, '0'), 1, 'O' || i, md5(i::text) || md5(i::text), i, kid, at,
                   'settled', 5000, 5000, 0, 5000, 0, 0, '[]', '[]', '{}', at FROM plan"""))
        conn.execute(text("""
            INSERT INTO payments (id, settlement_id, sequence, kind, account_id, owner_person_id, binding_id,
                amount_fen, refunded_fen, balance_after_fen, beneficiary_person_id, created_year)
            OVERRIDING SYSTEM VALUE
            SELECT i, i, 1, 'copay', account, owner, NULL, 5000, 0, 1000000, kid,
                   CAST(EXTRACT(YEAR FROM at AT TIME ZONE 'Asia/Shanghai') AS INTEGER) FROM plan"""))
        # 10,001 partial refunds of the heavy owner's (newest) payments, one for the ordinary owner.
        conn.execute(text("""
            CREATE TEMP TABLE refunded ON COMMIT DROP AS
            (SELECT i, owner, kid, at FROM plan WHERE owner = :heavy ORDER BY i DESC LIMIT 10001)
            UNION ALL (SELECT i, owner, kid, at FROM plan WHERE owner = :ordinary ORDER BY i DESC LIMIT 1)"""),
            params)
        conn.execute(text("""
            INSERT INTO refunds (id, refund_no, settlement_id, institution_id, out_refund_no, request_hash,
                amount_fen, cash_fen, cap_restored_fen, response, created_at)
            OVERRIDING SYSTEM VALUE
            SELECT i, 'R' || lpad(i::text, 20, '0'), i, 1, 'OR' || i, md5(i::text) || md5(i::text), 100, 0, 100, '{}',
                   at + interval '1 minute' FROM refunded"""))
        conn.execute(text("""
            INSERT INTO refund_parts (refund_id, payment_id, amount_fen, balance_after_fen, owner_person_id,
                beneficiary_person_id, created_year)
            SELECT i, i, 100, 1000100, owner, kid,
                   CAST(EXTRACT(YEAR FROM (at + interval '1 minute') AT TIME ZONE 'Asia/Shanghai') AS INTEGER)
            FROM refunded"""))
        conn.execute(text("UPDATE payments SET refunded_fen = 100 WHERE id IN (SELECT i FROM refunded)"))
        conn.execute(text("""
            INSERT INTO notices (kind, person_id, settlement_id, movement_key, settlement_no, amount_fen,
                balance_after_fen, content, created_at)
            SELECT 'deduction', owner, i, 's' || i, 'S' || lpad(i::text, 20, '0'), 5000, 1000000, '{}', at
            FROM plan WHERE i % 10 = 0 OR owner = :ordinary"""), params)
        for _name, definition in indexes:
            conn.execute(text(definition))
        for table in ("vouchers", "settlements", "payments", "refunds", "refund_parts", "notices"):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                              f"(SELECT coalesce(max(id), 1) FROM {table}))"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def timed(client, path: str, token: str, requests: int) -> tuple[float, float]:
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(10):  # past psycopg's prepare threshold: the generic plan is what we time
        assert client.get(path, headers=headers).status_code == 200, client.get(path, headers=headers).get_json()
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(path, headers=headers)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.99 * len(samples)))]


def deep_cursor(client, token: str, depth: int) -> str:
    """A cursor ``depth`` rows down the heavy owner's records (walked 100 rows a page, as a client would)."""
    cursor, walked = None, 0
    while walked < depth:
        page = client.get("/api/v1/records/deductions?role=owner&limit=100" + (f"&cursor={cursor}" if cursor else ""),
                          headers={"Authorization": f"Bearer {token}"}).get_json()
        walked += len(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            raise SystemExit("ran out of rows before the deep page")
    return cursor


def measure(app, who: dict, requests: int) -> dict[str, tuple[float, float]]:
    client = app.test_client()
    tokens = who["tokens"]
    older = datetime.now(UTC).year - 2
    depth = min(100_000, who["heavy_rows"] // 2)
    cursor = deep_cursor(client, tokens["heavy"], depth)
    paths = {
        "deductions heavy owner, first page": ("/api/v1/records/deductions?role=owner", "heavy"),
        f"deductions heavy owner, {depth:,} rows deep": (f"/api/v1/records/deductions?role=owner&cursor={cursor}",
                                                           "heavy"),
        f"deductions heavy owner, year {older}": (f"/api/v1/records/deductions?role=owner&year={older}", "heavy"),
        "deductions child as beneficiary": ("/api/v1/records/deductions?role=beneficiary", "child"),
        "deductions ordinary owner": ("/api/v1/records/deductions?role=owner", "ordinary"),
        "authorizations ordinary owner": ("/api/v1/records/authorizations", "ordinary"),
        "quota ordinary owner": ("/api/v1/quota", "ordinary"),
        "notifications ordinary owner": ("/api/v1/notifications", "ordinary"),
    }
    return {label: timed(client, path, tokens[name], requests) for label, (path, name) in paths.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000,10000000")
    parser.add_argument("--requests", type=int, default=200)
    options = parser.parse_args(argv)
    server = bench_server()
    results: dict[int, dict[str, tuple[float, float]]] = {}
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for n in (int(s) for s in options.sizes.split(",")):
        scratch = ScratchDatabase(server, "copay_records")
        try:
            app, who = build(scratch.url, n)
            with app.app_context():
                results[n] = measure(app, who, options.requests)
            app.extensions["db.engine"].dispose()
        finally:
            scratch.drop()
        for label, (p50, p99) in results[n].items():
            print(f"  {n:>10,}  {label:<45} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms", flush=True)
    sizes = sorted(results)
    print("\n| query | " + " | ".join(f"{n:,} p50 / p99 ms" for n in sizes) + " | p99 ratio largest / smallest |")
    print("|---|" + "---:|" * (len(sizes) + 1))
    labels = list(results[sizes[0]])
    for i, label in enumerate(labels):
        cells = [list(results[n].items())[i][1] for n in sizes]
        ratio = cells[-1][1] / cells[0][1] if cells[0][1] else float("nan")
        name = label if "rows deep" not in label else "deductions heavy owner, deep page (cursor)"
        print(f"| {name} | " + " | ".join(f"{a:.2f} / {b:.2f}" for a, b in cells) + f" | {ratio:.2f}× |")
    print(f"\nload average {os.getloadavg()[0]:.2f}; {json.dumps({'cpus': os.cpu_count()})}")


if __name__ == "__main__":
    main()
