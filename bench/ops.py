"""Operations benchmarks (issue 14), reported in docs/OPERATIONS.md. Separate from ``make bench``.

    .venv/bin/python -m bench.ops metrics [--requests 3000]
        Per-request cost of the /metrics hooks: the same app with and without them, interleaved
        rounds of GET /healthz (no database) and GET /readyz (one database round trip), through the
        WSGI stack (no network). Run once plainly and once with PROMETHEUS_MULTIPROC_DIR=$(mktemp -d)
        for gunicorn's multiprocess mode (metric values in mmapped files).

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
    .venv/bin/python -m bench.ops data [--persons 100000] [--settlements 1000000]
        On a scratch database (dropped at the end): load-registry of N persons, then M settlements
        with their vouchers, payments, journals, ledger entries and notices generated in SQL; time
        ``backup`` and ``restore`` (scripts/backup.py) and ``rotate-pii-key`` of every person.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text

from app.config import normalize_database_url
from bench.scratch import ScratchDatabase

KEYS = {"SECRET_KEY": "bench-secret", "PII_KEY": base64.urlsafe_b64encode(bytes(range(32))).decode(),
        "VOUCHER_KEY": base64.urlsafe_b64encode(bytes(range(1, 33))).decode(),
        "PLEDGE_SIGNING_KEY": base64.urlsafe_b64encode(bytes(range(2, 34))).decode(),
        # Its own blind-index key, as production requires: a PII_KEY rotation keeps it.
        "PII_INDEX_KEY": base64.urlsafe_b64encode(bytes(range(3, 35))).decode()}


# ---------------------------------------------------------------- metrics overhead
def _app(database_url: str, documents: str, with_metrics: bool):
    import app.metrics as metrics
    from app import create_app
    from app.config import Config

    original = metrics.init_app
    if not with_metrics:
        metrics.init_app = lambda app: None  # type: ignore[assignment]
    try:
        return create_app(Config.from_env(env={}, DATABASE_URL=database_url, DOCUMENT_DIR=documents,
                                          WECHAT_APPID="wxbench", WECHAT_SECRET="bench", **KEYS))
    finally:
        metrics.init_app = original


def bench_metrics(requests: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="copay-bench-metrics-"))
    url = f"sqlite:///{work / 'bench.sqlite3'}"
    from models import Base

    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    with_m, without = _app(url, str(work / "docs"), True), _app(url, str(work / "docs"), False)
    results: dict[tuple[str, bool], list[float]] = {}
    rounds = 9
    for path in ("/healthz", "/readyz"):
        for _round in range(rounds):
            for flag, app in ((True, with_m), (False, without)):
                client = app.test_client()
                # CPU time of this thread: what the hooks cost, not what other processes on the box take.
                started = time.thread_time()
                for _ in range(requests // rounds):
                    client.get(path)
                results.setdefault((path, flag), []).append((time.thread_time() - started) / (requests // rounds))
    from app.metrics import observe_request

    started = time.thread_time()
    for _ in range(100_000):
        observe_request("/api/v1/records/deductions", "GET", 200, 0.012)
    alone = (time.thread_time() - started) / 100_000
    mode = "multiprocess (mmap files)" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "single process"
    print(f"metrics overhead, {mode}, {requests} requests per variant, CPU time, best of {rounds} interleaved rounds:")
    for path in ("/healthz", "/readyz"):
        on = min(results[(path, True)]) * 1e6
        off = min(results[(path, False)]) * 1e6
        print(f"  GET {path}: {off:.0f} µs without, {on:.0f} µs with → {on - off:+.0f} µs per request")
    print(f"  counter + histogram update alone (observe_request): {alone * 1e6:.1f} µs")


# ---------------------------------------------------------------- data, backup/restore, rotation
GENERATE = [
    """CREATE TEMP TABLE bench_acc AS
       SELECT row_number() OVER (ORDER BY id) AS n, id, person_id FROM accounts WHERE kind = 'personal'""",
    """INSERT INTO vouchers (id, code_hash, person_id, holder_person_id, expires_at, used_at, created_at)
       SELECT g, md5(g::text) || md5((-g)::text), a.person_id, a.person_id, now(), now(), now() - g * interval '1 s'
       FROM generate_series(1, :m) g JOIN bench_acc a ON a.n = 1 + g % (SELECT count(*) FROM bench_acc)""",
    """INSERT INTO settlements (id, settlement_no, institution_id, out_settlement_no, request_hash, voucher_id,
         beneficiary_person_id, service_time, status, total_fen, eligible_fen, own_account_fen, copay_fen, cash_fen,
         refunded_fen, items, reasons, response, created_at)
       SELECT g, 'S' || lpad(g::text, 20, '0'), :inst, 'OUT' || g, md5(g::text) || md5(g::text), g, v.person_id,
         v.created_at, 'settled', 12345, 12345, 12345, 0, 0, 0,
         '[{"code": "D001", "name": "阿莫西林胶囊", "category": "drug", "in_catalogue": true, "amount_fen": 12345}]',
         '[]',
         json_build_object('settlement_no', 'S' || lpad(g::text, 20, '0'), 'out_settlement_no', 'OUT' || g,
           'status', 'settled', 'total_fen', 12345, 'eligible_fen', 12345, 'own_account_fen', 12345,
           'copay_fen', 0, 'cash_fen', 0, 'payments', json_build_array(json_build_object('payer',
           json_build_object('person_id', v.person_id, 'name', '**伟', 'id_number', '532***********1234'),
           'kind', 'own', 'amount_fen', 12345)), 'reasons', '[]'::json, 'year', 2026, 'cap_fen', 0,
           'cap_used_fen', 0, 'service_time', v.created_at, 'settled_at', v.created_at),
         v.created_at
       FROM vouchers v JOIN generate_series(1, :m) g ON v.id = g""",
    """INSERT INTO payments (id, settlement_id, sequence, kind, account_id, owner_person_id, amount_fen, refunded_fen,
         balance_after_fen, beneficiary_person_id, created_year)
       SELECT g, g, 1, 'own', a.id, a.person_id, 12345, 0, 100000, s.beneficiary_person_id,
         EXTRACT(YEAR FROM s.created_at AT TIME ZONE 'Asia/Shanghai')::int
       FROM generate_series(1, :m) g JOIN bench_acc a ON a.n = 1 + g % (SELECT count(*) FROM bench_acc)
         JOIN settlements s ON s.id = g""",
    """INSERT INTO journals (id, kind, settlement_id, created_at)
       SELECT :j0 + g, 'settlement', g, now() FROM generate_series(1, :m) g""",
    """INSERT INTO ledger_entries (journal_id, account_id, amount_fen)
       SELECT :j0 + g, a.id, -12345 FROM generate_series(1, :m) g
         JOIN bench_acc a ON a.n = 1 + g % (SELECT count(*) FROM bench_acc)
       UNION ALL SELECT :j0 + g, :inst_account, 12345 FROM generate_series(1, :m) g""",
    """INSERT INTO notices (kind, person_id, settlement_id, movement_key, settlement_no, amount_fen, balance_after_fen,
         content, created_at)
       SELECT 'deduction', s.beneficiary_person_id, s.id, 's' || s.id, s.settlement_no, 12345, 100000,
         json_build_object('institution', '文山州人民医院', 'amount_fen', 12345, 'beneficiary', '**伟',
           'relationship', 'self', 'settled_at', s.created_at), s.created_at
       FROM settlements s""",
]


def bench_data(server: str, persons: int, settlements: int) -> None:
    from app import create_app
    from app.config import Config
    from app.extensions import app_session, db
    from app.services.pii_rotation import rotate_pii
    from app.services.registry import load_registry
    from bench.load_registry import make_registry
    from models import Base
    from scripts.backup import backup, restore

    server = normalize_database_url(server)
    scratches = [ScratchDatabase(server, "copay_bench_ops"), ScratchDatabase(server, "copay_bench_ops_r")]
    urls = [scratch.url for scratch in scratches]
    work = Path(tempfile.mkdtemp(prefix="copay-bench-ops-"))
    try:
        engine = create_engine(urls[0])
        Base.metadata.create_all(engine)
        config = Config.from_env(env={}, DATABASE_URL=urls[0], DOCUMENT_DIR=str(work / "documents"),
                                 WECHAT_APPID="wxbench", WECHAT_SECRET="bench", **KEYS)
        app = create_app(config)
        registry = make_registry(persons)
        registry["institutions"] = [{"code": "H5326001", "name": "文山州人民医院", "kind": "hospital",
                                     "region_code": "532601", "designated": True,
                                     "api_secret": "bench-secret-H5326001-0123456789"}]
        with app.app_context():
            started = time.perf_counter()
            with app_session() as session:
                load_registry(session, app.extensions["domain"].pii, registry, datetime.now(UTC))
            print(f"load-registry {len(registry['persons'])} persons: {time.perf_counter() - started:.1f} s")
        with engine.begin() as conn:
            inst = conn.scalar(text("SELECT id FROM institutions LIMIT 1"))
            inst_account = conn.scalar(text("SELECT id FROM accounts WHERE kind <> 'personal' LIMIT 1")) or \
                conn.scalar(text("SELECT min(id) FROM accounts"))
            j0 = conn.scalar(text("SELECT coalesce(max(id), 0) FROM journals"))
            started = time.perf_counter()
            for statement in GENERATE:
                conn.execute(text(statement), {"m": settlements, "inst": inst, "inst_account": inst_account,
                                               "j0": j0})
        for table in ("vouchers", "settlements", "payments", "journals", "ledger_entries", "notices"):
            with engine.begin() as conn:
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))"))
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
            size = conn.scalar(text("SELECT pg_size_pretty(pg_database_size(current_database()))"))
        print(f"generated {settlements} settlements (+ vouchers, payments, journals, 2 ledger entries each, "
              f"notices) in {time.perf_counter() - started:.1f} s; database size {size}")

        started = time.perf_counter()
        made = backup(urls[0], work / "documents", work / "backups")
        took = time.perf_counter() - started
        dump_mb = (made / "db.dump").stat().st_size / 1e6
        print(f"backup (pg_dump -Fc + documents): {took:.1f} s, dump {dump_mb:.0f} MB")
        started = time.perf_counter()
        restore(made, urls[1], work / "restored-documents")
        print("restore (pg_restore --single-transaction into an empty database): "
              f"{time.perf_counter() - started:.1f} s")

        new_key = base64.urlsafe_b64encode(bytes(range(100, 132))).decode()
        rotated = create_app(Config.from_env(env={}, DATABASE_URL=urls[0], DOCUMENT_DIR=str(work / "documents"),
                                             WECHAT_APPID="wxbench", WECHAT_SECRET="bench",
                                             **{**KEYS, "PII_KEY": new_key}, PII_OLD_KEYS=KEYS["PII_KEY"]))
        with rotated.app_context():
            report = rotate_pii(db.engine, rotated.extensions["domain"].pii, batch_size=1000)
        print(f"rotate-pii-key: {report.rewritten_rows} rows ({report.rewritten_values} values) in "
              f"{report.seconds:.1f} s = {report.rows_per_second:.0f} rows/s "
              f"({report.rewritten_values / report.seconds:.0f} values/s)")
        engine.dispose()
        app.extensions["db.engine"].dispose()
        rotated.extensions["db.engine"].dispose()
    finally:
        for scratch in scratches:
            scratch.drop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ops")
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("metrics")
    m.add_argument("--requests", type=int, default=3000)
    d = sub.add_parser("data")
    d.add_argument("--persons", type=int, default=100_000)
    d.add_argument("--settlements", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.what == "metrics":
        bench_metrics(args.requests)
    else:
        server = os.environ.get("BENCH_DATABASE_URL")
        if not server:
            sys.exit("set BENCH_DATABASE_URL to a PostgreSQL server URL")
        bench_data(server, args.persons, args.settlements)


if __name__ == "__main__":
    main()
