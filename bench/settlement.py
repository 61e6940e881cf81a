"""Benchmark: the settlement hot path against a bare-transaction baseline, both under gunicorn.

    .venv/bin/python -m bench.settlement [--requests 2000] [--seconds 60] [--clients 6] [--workers 4]
                                         [--redis redis://127.0.0.1:6379/6] [--log-level WARNING]

Creates a scratch PostgreSQL database on ``BENCH_DATABASE_URL`` (default the local server; dropped
at the end), loads ``--families`` families (an owner with a large balance and a child bound to
them), one hospital, and one 亲情码 voucher per settlement. Then, one after the other, it serves on
127.0.0.1 with gunicorn (the same worker count for both):

1. ``bench/baseline_app.py``: lock an account, debit it, insert a row, commit;
2. the service: ``POST /api/v1/institution/settlements``, HMAC-signed, rate limits off, each request
   settling a 5000-fen drug for a child (co-pay from the owner's account, ledger, cap, notices).

Each is driven by ``--clients`` closed-loop client processes (one request at a time each, a fresh
loopback connection per request, as gunicorn's sync workers close it), bounded by ``--requests``
and ``--seconds``, after a warm-up. Prints throughput and p50/p99 latency of each, then runs the
ledger check over what the service wrote.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, select, text

from app.security.id_number import make_id_number
from app.security.request_signing import sign
from bench.scratch import ScratchDatabase, bench_server

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HOSPITAL = "HBENCH01"
HOSPITAL_SECRET = "bench-hospital-secret-0123456789"
SETTLE_PATH = "/api/v1/institution/settlements"
WARMUP = 60


def _key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Result:
    name: str
    ok: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    server_cpu_seconds: float

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.server_cpu_seconds / max(1, self.ok + self.errors)

    def line(self) -> str:
        return (f"{self.name:<10} {self.ok:>6} ok {self.errors:>4} errors {self.seconds:>6.1f} s "
                f"{self.throughput:>7.1f} req/s  p50 {self.percentile(0.50):>6.1f} ms  "
                f"p99 {self.percentile(0.99):>6.1f} ms  server CPU {self.cpu_ms_per_request:>5.1f} ms/req")


# --------------------------------------------------------------------------- data


def seed_families(app, families: int, vouchers: int, balance_fen: int, now: datetime) -> tuple[list, list[str]]:
    """Load ``families`` owner + child pairs (the owner's account holding ``balance_fen``) and the
    benchmark hospital, bind each child to its owner, and write ``vouchers`` 亲情码 codes for the
    children, round-robin. Returns the (owner person id, child person id) pairs and the codes."""
    from app.extensions import app_session
    from app.services.registry import load_registry
    from models import Binding, Person, Voucher

    domain = app.extensions["domain"]
    owners = [make_id_number("532621", date(1960, 1, 1) + timedelta(days=i), 100 + i % 800) for i in range(families)]
    children = [make_id_number("532621", date(2005, 1, 1) + timedelta(days=i), 100 + i % 800)
                for i in range(families)]
    registry = {
        "as_of": now.isoformat(),  # a snapshot taken now (load-registry requires it)
        "persons": [{"id_number": n, "name": f"职工{i}", "social_card_no": f"B{i:010d}", "insurance_type": "employee",
                     "region_code": "532621", "status": "active"} for i, n in enumerate(owners)]
        + [{"id_number": n, "name": f"孩子{i}", "social_card_no": f"K{i:010d}", "insurance_type": "resident",
            "region_code": "532621", "status": "active"} for i, n in enumerate(children)],
        "accounts": [{"id_number": n, "balance_fen": balance_fen} for n in owners],
        "households": [{"a": o, "b": c, "relationship": "child"} for o, c in zip(owners, children, strict=True)],
        "institutions": [{"code": HOSPITAL, "name": "基准医院", "kind": "hospital", "region_code": "532601",
                          "designated": True, "api_secret": HOSPITAL_SECRET}],
    }
    with app.app_context():
        with app_session() as session:
            load_registry(session, domain.pii, registry, now)
        codec = domain.money.vouchers
        codes: list[str] = []
        with app_session() as session, session.begin():
            ids = dict(session.execute(select(Person.id_number_bidx, Person.id)).all())
            person = {n: ids[domain.pii.blind_index(n, kind="id_number")] for n in owners + children}
            pairs = [(person[o], person[c]) for o, c in zip(owners, children, strict=True)]
            binding_ids = [session.execute(insert(Binding).values(
                owner_person_id=o, beneficiary_person_id=c, relationship="child", channel="window", status="active",
                effective_at=now - timedelta(days=30), relationship_confirmed=True, created_at=now,
            ).returning(Binding.id)).scalar_one() for o, c in pairs]
            rows = []
            for i in range(vouchers):
                owner_id, child_id = pairs[i % families]
                code = codec.new_code("53")
                codes.append(code)
                rows.append({"code_hash": codec.code_hash(code), "person_id": child_id, "holder_person_id": owner_id,
                             "holder_user_id": None, "binding_id": binding_ids[i % families],
                             "expires_at": now + timedelta(hours=3), "created_at": now})
            session.execute(insert(Voucher), rows)
    return pairs, codes


def seed(env: dict[str, str], families: int, vouchers: int) -> list[str]:
    """Load the families, bind each child to its owner, and write ``vouchers`` 亲情码 codes; return them."""
    from app import create_app
    from app.config import Config
    from app.extensions import app_session
    from models import Base

    app = create_app(Config.from_env(env=env))
    Base.metadata.create_all(app.extensions["db.engine"])
    now = datetime.now(UTC)
    _, codes = seed_families(app, families, vouchers, 100_000_000, now)
    with app.app_context():
        with app_session() as session, session.begin():
            for statement in ("CREATE TABLE IF NOT EXISTS bench_accounts (id BIGINT PRIMARY KEY, "
                              "balance_fen BIGINT NOT NULL)",
                              "CREATE TABLE IF NOT EXISTS bench_rows (id BIGSERIAL PRIMARY KEY, account_id BIGINT "
                              "NOT NULL, amount_fen BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL)",
                              "CREATE TABLE IF NOT EXISTS bench_outbox (id BIGSERIAL PRIMARY KEY, row_id BIGINT "
                              "NOT NULL, payload TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL)"):
                session.execute(text(statement))
            session.execute(text("INSERT INTO bench_accounts (id, balance_fen) "
                                 "SELECT g, 100000000 FROM generate_series(1, :n) g"), {"n": families})
    app.extensions["db.engine"].dispose()
    return codes


def check_ledger(env: dict[str, str]) -> str:
    from app import create_app
    from app.config import Config
    from app.extensions import app_session
    from app.services.ledger_check import verify_ledger

    app = create_app(Config.from_env(env=env))
    with app.app_context(), app_session() as session:
        report = verify_ledger(session)
    app.extensions["db.engine"].dispose()
    if report.clean:
        return f"verify-ledger: clean ({report.settlements} settlements, {report.accounts} accounts)"
    return "verify-ledger: " + "; ".join(report.differences[:10])


# --------------------------------------------------------------------------- servers and clients


def serve(module: str, port: int, workers: int, env: dict[str, str]) -> subprocess.Popen:
    process = subprocess.Popen(  # noqa: S603 — our own gunicorn, fixed arguments
        [str(VENV_BIN / "gunicorn"), "-w", str(workers), "-b", f"127.0.0.1:{port}", "--log-level", "warning",
         "--no-control-socket", module], cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit(f"{module} did not start on port {port}")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def server_cpu_seconds(master_pid: int) -> float:
    """User + system CPU used so far by gunicorn's master and workers (Linux /proc): a figure that,
    unlike throughput on a shared machine, does not depend on what else the cores are doing."""
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [master_pid]
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    if children.exists():
        pids += [int(pid) for pid in children.read_text().split()]
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _settlement_request(code: str) -> tuple[str, dict[str, str], bytes]:
    body = json.dumps({"out_settlement_no": "B" + uuid.uuid4().hex[:20], "voucher_code": code,
                       "items": [{"code": "D1", "name": "药品", "category": "drug", "in_catalogue": True,
                                  "amount_fen": 5_000}]}).encode()
    ts, nonce = str(int(time.time())), secrets.token_hex(16)
    return SETTLE_PATH, {"X-Inst-Code": HOSPITAL, "X-Timestamp": ts, "X-Nonce": nonce, "Content-Type":
                         "application/json", "X-Signature": sign(HOSPITAL_SECRET, "POST", SETTLE_PATH, ts, nonce,
                                                                 body)}, body


def _baseline_request(account_id: int) -> tuple[str, dict[str, str], bytes]:
    body = json.dumps({"account_id": account_id, "amount_fen": 1}).encode()
    return "/settle", {"Content-Type": "application/json"}, body


def _client(args: tuple[str, int, list, float]) -> tuple[int, int, list[float]]:
    """One closed-loop client: send its requests one at a time until done or the deadline."""
    kind, port, work, deadline = args
    ok = errors = 0
    latencies: list[float] = []
    for unit in work:
        if time.monotonic() > deadline:
            break
        path, headers, body = _settlement_request(unit) if kind == "service" else _baseline_request(unit)
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            status = response.status
        except OSError:
            status = 0
        finally:
            conn.close()
        elapsed = (time.perf_counter() - started) * 1000
        if status == 201:
            ok += 1
            latencies.append(elapsed)
        else:
            errors += 1
    return ok, errors, latencies


def drive(name: str, kind: str, server: subprocess.Popen, port: int, units: list, clients: int,
          seconds: float) -> Result:
    warm, measured = units[:WARMUP], units[WARMUP:]
    with multiprocessing.Pool(clients) as pool:
        pool.map(_client, [(kind, port, warm[i::clients], time.monotonic() + 30) for i in range(clients)])
        cpu_before = server_cpu_seconds(server.pid)
        started = time.perf_counter()
        deadline = time.monotonic() + seconds
        parts = pool.map(_client, [(kind, port, measured[i::clients], deadline) for i in range(clients)])
        elapsed = time.perf_counter() - started
        cpu = server_cpu_seconds(server.pid) - cpu_before
    return Result(name, sum(p[0] for p in parts), sum(p[1] for p in parts), elapsed,
                  [latency for p in parts for latency in p[2]], cpu)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--families", type=int, default=500)
    parser.add_argument("--redis", default=None, help="REDIS_URL for the service (nonces); default: none")
    parser.add_argument("--log-level", default="WARNING", help="the service's LOG_LEVEL (INFO logs every request)")
    options = parser.parse_args()

    scratch = ScratchDatabase(bench_server())
    url = scratch.url
    env = {**os.environ, "DATABASE_URL": url, "BENCH_DATABASE_URL": url, "SECRET_KEY": secrets.token_urlsafe(32),
           "PII_KEY": _key(), "VOUCHER_KEY": _key(), "PLEDGE_SIGNING_KEY": _key(), "RATE_LIMIT_PER_USER": "off",
           "RATE_LIMIT_PER_IP": "off", "LOG_LEVEL": options.log_level, "PYTHONPATH": str(ROOT)}
    env.pop("REDIS_URL", None)
    if options.redis:
        env["REDIS_URL"] = options.redis
    total = options.requests + WARMUP
    try:
        codes = seed(env, options.families, total)
        print(f"seeded {options.families} families, {total} vouchers; {options.workers} gunicorn workers, "
              f"{options.clients} clients, nonces in {'Redis' if options.redis else 'PostgreSQL'}, "
              f"service LOG_LEVEL {options.log_level}", flush=True)
        results = []
        for label, module, kind, units, port in (
            ("baseline", "bench.baseline_app:app", "baseline", [1 + i % options.families for i in range(total)], 8101),
            ("service", "wsgi:app", "service", codes, 8102),
        ):
            process = serve(module, port, options.workers, env)
            try:
                results.append(drive(label, kind, process, port, units, options.clients, options.seconds))
            finally:
                stop(process)
            print(results[-1].line(), flush=True)
        baseline, service = results
        if baseline.throughput:
            print(f"service / baseline: throughput {service.throughput / baseline.throughput:.2f}, "
                  f"server CPU per request {service.cpu_ms_per_request / baseline.cpu_ms_per_request:.2f}x")
        print(check_ledger(env))
    finally:
        scratch.drop()


if __name__ == "__main__":
    main()
