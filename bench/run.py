"""``make bench``: the hot paths against their bare references, in one run, in one table.

    .venv/bin/python -m bench.run [--seconds 15] [--clients 32] [--workers 4] [--worker-class gthread]
                                  [--threads 4] [--only settlement,voucher,signin,me] [--profile DIR]
                                  [--client wrk|python]

What it does, on this machine only (nothing is left behind):

1. creates a scratch PostgreSQL database on ``BENCH_DATABASE_URL`` (default the local server; dropped
   at the end) and empties Redis database ``BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/6``,
   ``bench.scratch.bench_redis``);
2. loads ``--families`` families (an owner with a large balance, a child bound to them), one hospital,
   a signed-in user per owner (an access token), and enough 亲情码 vouchers for the settlements;
3. starts the WeChat emulator in this process and, on free ports, gunicorn for the service
   (``wsgi:app``, rate limits off, Redis for nonces and jobs) and for the reference app
   (``bench/baseline_app.py``: the bare transactions, nothing else);
4. for each path drives the service and then its reference with ``--clients`` closed-loop clients
   (keep-alive HTTP/1.1, one request at a time each): a warm-up, then ``--seconds`` measured. Each
   server is started for its phase and stopped after it, so that ``pg_stat_database`` (flushed
   when the server's connections close) gives the commits and rollbacks per request of that phase
   alone. The clients are ``wrk`` (``--client wrk``, the default when it is installed:
   ``bench/loadgen.py``, ``bench/wrk_requests.lua``), one thread and connection per client, sending
   requests rendered — settlements signed — before the server starts; or (``--client python``, and
   without wrk) Python ``http.client`` threads in ``--client-processes`` processes that build and
   sign each request in the loop. Either way the client's own CPU is measured and reported;
5. prints one table — path, throughput, reference, ratio, p50/p99, commits (and rollbacks) per
   request, server, PostgreSQL and client CPU per request — then runs ``verify-ledger`` over
   everything the service wrote.

Paths: ``POST /institution/settlements`` (a child's drug bill, co-pay from the parent: HMAC-signed,
nonce in Redis) against lock + debit + ledger row + outbox row; ``POST /vouchers`` (亲情码 for the
child) against token look-up + one insert; ``POST /auth/wechat`` against the emulator (no reference);
``GET /me`` against a token look-up joined to the user.

``--profile DIR`` runs py-spy (when installed) on the service's workers for each service phase and
writes a flame graph per path into DIR.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import multiprocessing
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, insert, select, text

from app.security.request_signing import sign
from bench import loadgen
from bench.scratch import ScratchDatabase, bench_redis, bench_server
from bench.settlement import HOSPITAL, HOSPITAL_SECRET, seed_families

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SETTLE_PATH = "/api/v1/institution/settlements"
WECHAT_APPID, WECHAT_SECRET = "wxbench000000001", "bench-wechat-secret"
PATHS = ("settlement", "voucher", "signin", "me")
# Requests that may be sent again (a token, an account): wrk goes round a short list of them. The
# others (a voucher code, a login code, with a settlement its number and nonce) are sent once each.
REPEATABLE = frozenset({"voucher", "ref-voucher", "me", "ref-me", "ref-settlement"})


def _key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def service_env(database_url: str, redis_url: str, log_level: str = "WARNING") -> dict[str, str]:
    """The environment the service (and the reference app) run with in a benchmark: the scratch
    database, fresh keys, rate limits off, Redis for nonces and the notice hand-over."""
    return {**os.environ, "DATABASE_URL": database_url, "BENCH_DATABASE_URL": database_url,
            "SECRET_KEY": secrets.token_urlsafe(32), "PII_KEY": _key(), "PII_INDEX_KEY": _key(),
            "VOUCHER_KEY": _key(), "PLEDGE_SIGNING_KEY": _key(), "RATE_LIMIT_PER_USER": "off",
            "RATE_LIMIT_PER_IP": "off", "LOG_LEVEL": log_level, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- results


@dataclass
class Phase:
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    requests_total: int = 0  # warm-up included: what the commit counts are divided by
    commits: int = 0
    rollbacks: int = 0
    server_cpu_seconds: float = 0.0
    database_cpu_seconds: float = 0.0
    client_cpu_seconds: float = 0.0  # the load generator's own (user + system), warm-up included
    error_sample: str = ""

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def in_flight(self) -> float:
        """Requests under way on average in the measured window (Little's law: rate × mean latency):
        ``--clients`` if the clients keep one request each in the server at all times, less if
        they spend time between requests (building, signing, reading, waiting for their GIL)."""
        if not self.latencies_ms:
            return 0.0
        return self.throughput * sum(self.latencies_ms) / len(self.latencies_ms) / 1000

    @property
    def commits_per_request(self) -> float:
        return self.commits / max(1, self.requests_total)

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.server_cpu_seconds / max(1, self.requests_total)

    @property
    def database_cpu_ms_per_request(self) -> float:
        return 1000 * self.database_cpu_seconds / max(1, self.requests_total)

    @property
    def client_cpu_ms_per_request(self) -> float:
        return 1000 * self.client_cpu_seconds / max(1, self.requests_total)

    @property
    def rollbacks_per_request(self) -> float:
        return self.rollbacks / max(1, self.requests_total)


# --------------------------------------------------------------------------- data


def seed(env: dict[str, str], families: int, vouchers: int) -> dict[str, list]:
    """Families, bindings, the hospital, one user + access token per owner, vouchers; return what clients need."""
    from app import create_app
    from app.config import Config
    from app.extensions import app_session
    from models import AuthToken, Base, User

    app = create_app(Config.from_env(env=env))
    Base.metadata.create_all(app.extensions["db.engine"])
    now = datetime.now(UTC)
    out: dict[str, list] = {"codes": [], "tokens": [], "children": [], "floor": []}
    # Half of the vouchers for the service, half (as stored hashes) for the floor reference.
    pairs, codes = seed_families(app, families, 2 * vouchers, 1_000_000_000, now)
    out["codes"] = codes[:vouchers]
    with app.app_context():
        from app.services.ledger import clearing_account_ids
        from models import Institution

        with app_session() as session, session.begin():
            institution_id = session.scalar(select(Institution.id).where(Institution.code == HOSPITAL))
            clearing_ids = clearing_account_ids(session, institution_id)
        codec = app.extensions["domain"].money.vouchers
        # Spread over the institution's clearing accounts as the service's settlements are.
        out["floor"] = [(codec.code_hash(code), institution_id, clearing_ids[i % len(clearing_ids)])
                        for i, code in enumerate(codes[vouchers:])]
        with app_session() as session, session.begin():
            user_ids = [session.execute(insert(User).values(
                channel="wechat", wechat_openid=f"o-bench-owner-{i}", person_id=owner_id, verified_at=now,
                last_login_at=now, created_at=now).returning(User.id)).scalar_one()
                for i, (owner_id, _) in enumerate(pairs)]
            tokens = ["at_" + secrets.token_urlsafe(32) for _ in user_ids]
            session.execute(insert(AuthToken), [
                {"kind": "access", "token_hash": hashlib.sha256(t.encode()).hexdigest(), "user_id": u,
                 "chain_id": secrets.token_hex(16), "expires_at": now + timedelta(hours=3), "created_at": now}
                for t, u in zip(tokens, user_ids, strict=True)])
            out["tokens"] = tokens
            out["children"] = [c for _, c in pairs]
            for statement in (
                "CREATE TABLE bench_accounts (id BIGINT PRIMARY KEY, balance_fen BIGINT NOT NULL)",
                "CREATE TABLE bench_rows (id BIGSERIAL PRIMARY KEY, account_id BIGINT NOT NULL, "
                "amount_fen BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL)",
                "CREATE TABLE bench_outbox (id BIGSERIAL PRIMARY KEY, row_id BIGINT NOT NULL, "
                "payload TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL)",
                "CREATE TABLE bench_tokens (token_hash TEXT PRIMARY KEY, user_id BIGINT NOT NULL, "
                "expires_at TIMESTAMPTZ NOT NULL)",
                "CREATE TABLE bench_users (id BIGINT PRIMARY KEY, person_id BIGINT, channel TEXT NOT NULL)",
                "CREATE TABLE bench_vouchers (id BIGSERIAL PRIMARY KEY, code_hash TEXT UNIQUE NOT NULL, "
                "user_id BIGINT NOT NULL, person_id BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL)",
            ):
                session.execute(text(statement))
            session.execute(text("INSERT INTO bench_accounts (id, balance_fen) "
                                 "SELECT g, 1000000000 FROM generate_series(1, :n) g"), {"n": families})
            session.execute(text("INSERT INTO bench_users (id, person_id, channel) VALUES (:id, :p, 'wechat')"),
                            [{"id": u, "p": o} for u, (o, _) in zip(user_ids, pairs, strict=True)])
            session.execute(text("INSERT INTO bench_tokens (token_hash, user_id, expires_at) VALUES (:h, :u, :e)"),
                            [{"h": hashlib.sha256(t.encode()).hexdigest(), "u": u, "e": now + timedelta(hours=3)}
                             for t, u in zip(tokens, user_ids, strict=True)])
            session.execute(text("ANALYZE"))
    app.extensions["db.engine"].dispose()
    return out


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
    return "verify-ledger: NOT CLEAN: " + "; ".join(report.differences[:10])


def prime(scratch: ScratchDatabase, options: argparse.Namespace, env: dict[str, str], codes: list) -> None:
    """Settlements through the service for ``--prime`` seconds (not measured), so that the measured
    phases start on tables that hold rows — the ledger, payments, notices — and statistics of them."""
    port = free_port()
    process = serve("wsgi:app", port, options, env)
    try:
        result = drive("settlement", port, codes, options.clients, options.client_processes, 0.0, options.prime)
    finally:
        stop(process)
    print(f"primed with {result.ok} settlements ({result.errors} errors)", flush=True)
    scratch.analyze()


def transaction_counts(admin_url: str, database: str) -> tuple[int, int]:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        row = conn.execute(text("SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = :d"),
                           {"d": database}).one()
    engine.dispose()
    return int(row[0]), int(row[1])


# --------------------------------------------------------------------------- servers


def serve(module: str, port: int, options: argparse.Namespace, env: dict[str, str]) -> subprocess.Popen:
    command = [str(VENV_BIN / "gunicorn"), "-w", str(options.workers), "-k", options.worker_class,
               "--threads", str(options.threads), "-b", f"127.0.0.1:{port}", "--log-level", "warning",
               "--backlog", "256", "--no-control-socket", module]
    process = subprocess.Popen(command, cwd=ROOT, env=env)  # noqa: S603 — our own gunicorn, fixed arguments
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                _wait_until_booted(process.pid, options.workers, deadline)
                return process
        except OSError:
            time.sleep(0.2)
    stop(process)
    raise SystemExit(f"{module} did not start on port {port}")


def _wait_until_booted(master_pid: int, workers: int, deadline: float) -> None:
    """Wait until every worker has started and the server sits idle: the first worker answering
    ``/healthz`` says nothing of the others, still importing the app (≈ 1 s of CPU each for the
    service, far less for the reference) — CPU that would otherwise be counted as the requests'."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    last = server_cpu_seconds(master_pid)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = server_cpu_seconds(master_pid)
        started = len(children.read_text().split()) if children.exists() else workers
        if started >= workers and now - last < 0.02:
            return
        last = now


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def server_cpu_seconds(master_pid: int) -> float:
    """User + system CPU used so far by gunicorn's master and workers (Linux /proc): unlike
    throughput on a shared machine, it does not depend on what else the cores are doing."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    pids = [master_pid] + ([int(pid) for pid in children.read_text().split()] if children.exists() else [])
    return sum(_cpu_seconds(pids).values())


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each live process of ``pids`` (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return out


def database_cpu_seconds(admin_url: str, database: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend serving ``database`` (the server is local):
    what the database did for a phase, read before its server closes the connections."""
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        pids = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"),
                            {"d": database}).scalars().all()
    engine.dispose()
    return _cpu_seconds([int(pid) for pid in pids])


# --------------------------------------------------------------------------- clients


def _request(kind: str, unit: object, seq: int) -> tuple[str, str, dict[str, str], bytes | None, int]:
    """(method, path, headers, body, expected status) of one request of ``kind``."""
    if kind == "settlement":
        body = json.dumps({"out_settlement_no": "B" + uuid.uuid4().hex[:20], "voucher_code": unit,
                           "items": [{"code": "D1", "name": "药品", "category": "drug", "in_catalogue": True,
                                      "amount_fen": 5_000}]}).encode()
        ts, nonce = str(int(time.time())), secrets.token_hex(16)
        return "POST", SETTLE_PATH, {
            "X-Inst-Code": HOSPITAL, "X-Timestamp": ts, "X-Nonce": nonce, "Content-Type": "application/json",
            "X-Signature": sign(HOSPITAL_SECRET, "POST", SETTLE_PATH, ts, nonce, body)}, body, 201
    if kind == "floor-settlement":
        code_hash, institution_id, clearing_id = unit  # type: ignore[misc]
        return "POST", "/settle-rows", {"Content-Type": "application/json"}, json.dumps(
            {"code_hash": code_hash, "amount_fen": 5_000, "institution_id": institution_id,
             "clearing_id": clearing_id}).encode(), 201
    if kind == "ref-settlement":
        return "POST", "/settle", {"Content-Type": "application/json"}, json.dumps(
            {"account_id": unit, "amount_fen": 1}).encode(), 201
    if kind == "voucher":
        token, child = unit  # type: ignore[misc]
        return "POST", "/api/v1/vouchers", {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, \
            json.dumps({"person_id": child}).encode(), 201
    if kind == "ref-voucher":
        token, child = unit  # type: ignore[misc]
        return "POST", "/voucher", {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, \
            json.dumps({"person_id": child}).encode(), 201
    if kind == "signin":
        return "POST", "/api/v1/auth/wechat", {"Content-Type": "application/json"}, \
            json.dumps({"code": unit}).encode(), 200
    if kind == "me":
        return "GET", "/api/v1/me", {"Authorization": f"Bearer {unit}"}, None, 200
    if kind == "ref-me":
        return "GET", "/me", {"Authorization": f"Bearer {unit}"}, None, 200
    raise ValueError(kind)


def _client_thread(kind: str, port: int, units: list, warm_until: float, deadline: float, out: list) -> None:
    conn: http.client.HTTPConnection | None = None
    ok = errors = total = 0
    latencies: list[float] = []
    sample = ""
    for seq, unit in enumerate(units):
        moment = time.monotonic()
        if moment > deadline:
            break
        method, path, headers, body, expected = _request(kind, unit, seq)
        started = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            status = response.status
            if response.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            status, payload = 0, repr(exc).encode()
            if conn is not None:
                conn.close()
            conn = None
        elapsed = (time.perf_counter() - started) * 1000
        total += 1
        if moment < warm_until:
            continue
        if status == expected:
            ok += 1
            latencies.append(elapsed)
        else:
            errors += 1
            sample = sample or f"{status} {payload[:200]!r}"
    if conn is not None:
        conn.close()
    out.append((ok, errors, total, latencies, sample))


def _client_process(args: tuple) -> tuple[int, int, int, list[float], str, float]:
    kind, port, units_per_thread, warm_until, deadline = args
    out: list = []
    threads = [threading.Thread(target=_client_thread, args=(kind, port, units, warm_until, deadline, out))
               for units in units_per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)  # this forked client process's own CPU
    return (sum(o[0] for o in out), sum(o[1] for o in out), sum(o[2] for o in out),
            [x for o in out for x in o[3]], next((o[4] for o in out if o[4]), ""),
            usage.ru_utime + usage.ru_stime)


def drive(kind: str, port: int, units: list, clients: int, processes: int, warmup: float,
          seconds: float) -> Phase:
    """``clients`` closed-loop Python clients (``processes`` × threads) on ``units`` (each used once),
    each request built (a settlement signed) in the loop."""
    per_client = [units[i::clients] for i in range(clients)]
    groups = [per_client[p::processes] for p in range(processes)]
    start = time.monotonic() + 0.5
    warm_until, deadline = start + warmup, start + warmup + seconds
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        parts = pool.map(_client_process, [(kind, port, g, warm_until, deadline) for g in groups])
    measured_end = min(time.monotonic(), deadline)
    phase = Phase(ok=sum(p[0] for p in parts), errors=sum(p[1] for p in parts),
                  requests_total=sum(p[2] for p in parts), latencies_ms=[x for p in parts for x in p[3]],
                  seconds=max(0.001, measured_end - warm_until),
                  error_sample=next((p[4] for p in parts if p[4]), ""),
                  client_cpu_seconds=sum(p[5] for p in parts))
    return phase


def render_requests(kind: str, units: list, host: str) -> tuple[list[bytes], int]:
    """Every request of ``kind`` on ``units`` as raw bytes (a settlement signed now, with its own
    number and nonce), and the status that means ok."""
    requests, expected = [], 0
    for seq, unit in enumerate(units):
        method, path, headers, body, expected = _request(kind, unit, seq)
        requests.append(loadgen.render(method, path, headers, body, host))
    return requests, expected


def drive_wrk(kind: str, port: int, requests: list[bytes], expected: int, clients: int, warmup: float,
              seconds: float, workdir: Path) -> Phase:
    """``clients`` closed-loop wrk connections on pre-rendered ``requests``: a warm-up run, then the
    measured run starting where each connection's warm-up stopped (no request is sent twice unless
    ``kind`` is REPEATABLE, when each connection goes round its share)."""
    prefix = workdir / kind
    loadgen.write_slices(prefix, requests, clients)
    url, cycle = f"http://127.0.0.1:{port}", kind in REPEATABLE
    warm = loadgen.run_wrk(url, prefix, clients, round(warmup), expected, cycle)
    run = loadgen.run_wrk(url, prefix, clients, round(seconds), expected, cycle, offsets=warm.positions)
    sample = run.sample
    if run.lost:
        sample = f"{sample}; " if sample else ""
        sample += "no response: " + ", ".join(f"{n} {k}" for k, n in run.socket_errors.items() if n)
    if run.exhausted or warm.exhausted:
        sample = (f"{run.exhausted + warm.exhausted} clients ran out of requests (the rate is understated: "
                  f"raise --max-rate); " + sample)
    for f in workdir.glob(f"{kind}.*"):
        f.unlink()
    return Phase(ok=run.ok, errors=run.errors + run.lost, seconds=run.seconds, latencies_ms=run.latencies_ms,
                 requests_total=warm.sent + run.sent, error_sample=sample,
                 client_cpu_seconds=warm.cpu_seconds + run.cpu_seconds)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--client", choices=("wrk", "python"), default=None,
                        help="the load generator (default: wrk when installed, else python)")
    parser.add_argument("--client-processes", type=int, default=4, help="processes of the python client")
    parser.add_argument("--workers", type=int, default=2)
    # deploy/gunicorn.conf.py's setting on two cores (2 workers x 4 threads since session 6, 4 x 4
    # before), for the service and the reference alike; --workers 4 gives sessions 3-5's setting,
    # --worker-class sync --threads 1 the figures of the first two sessions.
    parser.add_argument("--worker-class", default="gthread")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--families", type=int, default=2000)
    parser.add_argument("--only", default=",".join(PATHS))
    parser.add_argument("--max-rate", type=float, default=1500.0, help="sizes the pre-made vouchers and codes")
    parser.add_argument("--prime", type=float, default=3.0,
                        help="seconds of settlements through the service before the first phase, then ANALYZE")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--profile", default=None, help="directory for py-spy flame graphs of the service phases")
    options = parser.parse_args(argv)
    only = [p for p in PATHS if p in options.only.split(",")]
    if options.client is None:
        options.client = "wrk" if loadgen.wrk_path() else "python"
        if options.client == "python":
            print("NOTICE: wrk is not installed (Debian: apt-get install wrk; make bench installs it as root), "
                  "so the Python client drives the servers: its own CPU per request (the table's client "
                  "column) is several times wrk's and comes out of the same cores, so the rates are lower "
                  "than with wrk; see docs/PERFORMANCE.md", flush=True)
    elif options.client == "wrk" and not loadgen.wrk_path():
        raise SystemExit("--client wrk: wrk is not installed (apt-get install wrk)")
    window = 300  # INSTITUTION_SIGNATURE_WINDOW_SECONDS's default: the settlements are signed before the phase
    if options.client == "wrk" and "settlement" in only and options.warmup + options.seconds > window - 90:
        raise SystemExit(f"--client wrk signs the settlements before their phase, and the service accepts a "
                         f"signature for {window} s: keep --warmup + --seconds under {window - 90}, or use "
                         f"--client python")

    server_url = bench_server()
    redis_url = bench_redis()
    scratch = ScratchDatabase(server_url)
    name, url = scratch.name, scratch.url
    import redis as redis_lib

    from sandbox import Sandbox

    redis_lib.Redis.from_url(redis_url).flushdb()
    sandbox = Sandbox().start()
    sandbox.register_wechat_app(WECHAT_APPID, WECHAT_SECRET, templates=["T-deduction"])
    env = {**service_env(url, redis_url, options.log_level), "WECHAT_APPID": WECHAT_APPID,
           "WECHAT_SECRET": WECHAT_SECRET, "WECHAT_API_BASE_URL": f"http://127.0.0.1:{sandbox.port}/",
           "WECHAT_TEMPLATE_DEDUCTION": "T-deduction"}
    budget = int(options.max_rate * (options.seconds + options.warmup + 2))
    rows: list[tuple[str, Phase, Phase | None]] = []
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="bench-requests-"))
    try:
        primed = int(options.max_rate * options.prime) if "settlement" in only else 0
        data = seed(env, options.families, budget + primed if "settlement" in only else 10)
        data["codes"], prime_codes = data["codes"][primed:], data["codes"][:primed]
        print(f"seeded {options.families} families, {len(data['codes'])} vouchers; gunicorn {options.workers} "
              f"{options.worker_class} workers x {options.threads} threads; {options.clients} clients "
              f"({options.client}); load average {load_before[0]:.2f}", flush=True)
        units = {
            "settlement": data["codes"],
            "ref-settlement": [1 + i % options.families for i in range(budget)],
            "floor-settlement": data["floor"],
            "voucher": [(data["tokens"][i % options.families], data["children"][i % options.families])
                        for i in range(budget)],
            "me": [data["tokens"][i % options.families] for i in range(budget)],
        }
        units["ref-voucher"], units["ref-me"] = units["voucher"], units["me"]

        def phase(kind: str, module: str) -> Phase:
            if kind == "signin":
                # Each code is sent once, and a client that runs out stops: as many as the other paths
                # get (session 3's 800/s budget ran short once sign-in passed 650/s with wrk).
                units["signin"] = [sandbox.issue_wechat_login_code(f"o-bench-signin-{i % 5000}")
                                   for i in range(budget)]
            port = free_port()
            scratch.analyze()
            if options.client == "wrk":  # rendered (and signed) before the server starts
                started = time.perf_counter()
                repeatable = kind in REPEATABLE
                requests, expected = render_requests(
                    kind, units[kind][:max(options.clients, options.families)] if repeatable else units[kind],
                    f"127.0.0.1:{port}")
                print(f"  {kind:<15} {len(requests)} requests rendered in {time.perf_counter() - started:.1f} s"
                      f"{' (sent round and round)' if repeatable else ' (each sent once)'}", flush=True)
            before = transaction_counts(server_url, name)
            process = serve(module, port, options, env)
            spy = None
            try:
                if options.profile and not kind.startswith("ref-"):
                    spy = _start_profile(process.pid, Path(options.profile) / f"{kind}.folded",
                                         options.warmup + options.seconds)
                cpu_before = server_cpu_seconds(process.pid)
                database_before = database_cpu_seconds(server_url, name)
                if options.client == "wrk":
                    result = drive_wrk(kind, port, requests, expected, options.clients, options.warmup,
                                       options.seconds, workdir)
                else:
                    result = drive(kind, port, units[kind], options.clients, options.client_processes,
                                   options.warmup, options.seconds)
                result.server_cpu_seconds = server_cpu_seconds(process.pid) - cpu_before
                database_after = database_cpu_seconds(server_url, name)
                result.database_cpu_seconds = sum(cpu - database_before.get(pid, 0.0)
                                                  for pid, cpu in database_after.items())
            finally:
                stop(process)
                if spy is not None:
                    spy.wait(timeout=60)
                    print(profile_summary(Path(options.profile) / f"{kind}.folded"), flush=True)
            time.sleep(0.5)
            after = transaction_counts(server_url, name)
            result.commits, result.rollbacks = after[0] - before[0] - 1, after[1] - before[1]
            print(f"  {kind:<15} {result.ok:>6} ok {result.errors:>5} errors  {result.throughput:8.1f}/s  "
                  f"p50 {result.percentile(0.5):6.1f} ms  p99 {result.percentile(0.99):6.1f} ms  "
                  f"commits/req {result.commits_per_request:.2f}  rollbacks/req {result.rollbacks_per_request:.2f}  "
                  f"server CPU {result.cpu_ms_per_request:.1f} ms/req  "
                  f"PostgreSQL CPU {result.database_cpu_ms_per_request:.1f} ms/req  "
                  f"client CPU {result.client_cpu_ms_per_request:.2f} ms/req  in flight {result.in_flight:.1f}"
                  + (f"  first error: {result.error_sample}" if result.error_sample else ""), flush=True)
            return result

        if prime_codes:
            prime(scratch, options, env, prime_codes)
        for path in only:
            service = phase(path, "wsgi:app")
            reference = phase(f"ref-{path}", "bench.baseline_app:app") if path != "signin" else None
            rows.append((path, service, reference))
            if path == "settlement":
                rows.append(("settlement-floor", phase("floor-settlement", "bench.baseline_app:app"), reference))
        load_after = os.getloadavg()
        print()
        print(table(rows))
        print(f"\nload average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
              f"{os.cpu_count()} CPUs; gunicorn {options.workers} {options.worker_class} workers x "
              f"{options.threads} threads; {options.clients} closed-loop clients ({options.client})")
        print(check_ledger(env))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        sandbox.stop()
        scratch.drop()
        redis_lib.Redis.from_url(redis_url).flushdb()


LABELS = {"settlement": "POST /institution/settlements", "voucher": "POST /vouchers",
          "settlement-floor": "floor: a settlement's statements and rows, no rules",
          "signin": "POST /auth/wechat", "me": "GET /me"}


def table(rows: list[tuple[str, Phase, Phase | None]]) -> str:
    lines = ["| path | service req/s | reference req/s | ratio | service p50 / p99 ms | reference p50 / p99 ms "
             "| commits / req (rollbacks) | reference commits / req | server CPU ms / req (reference) "
             "| PostgreSQL CPU ms / req (reference) | client CPU ms / req (reference) | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for path, s, r in rows:
        ref = f"{r.throughput:.0f}" if r else "—"
        ratio = f"{s.throughput / r.throughput:.2f}×" if r and r.throughput else "—"
        ref_lat = f"{r.percentile(0.5):.1f} / {r.percentile(0.99):.1f}" if r else "—"
        ref_commits = f"{r.commits_per_request:.2f}" if r else "—"
        lines.append(f"| `{LABELS[path]}` | {s.throughput:.0f} | {ref} | {ratio} | "
                     f"{s.percentile(0.5):.1f} / {s.percentile(0.99):.1f} | {ref_lat} | "
                     f"{s.commits_per_request:.2f} ({s.rollbacks_per_request:.2f}) | {ref_commits} | "
                     f"{s.cpu_ms_per_request:.1f} ({f'{r.cpu_ms_per_request:.1f}' if r else '—'}) | "
                     f"{s.database_cpu_ms_per_request:.1f} "
                     f"({f'{r.database_cpu_ms_per_request:.1f}' if r else '—'}) | "
                     f"{s.client_cpu_ms_per_request:.2f} ({f'{r.client_cpu_ms_per_request:.2f}' if r else '—'}) | "
                     f"{s.errors}{'/' + str(r.errors) if r else ''} |")
    return "\n".join(lines)


def profile_summary(folded: Path, top: int = 25) -> str:
    """The functions with the largest inclusive share of the samples of a py-spy ``raw`` (folded) file."""
    if not folded.exists():
        return "  (no profile written)"
    inclusive: dict[str, int] = {}
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        for frame in set(stack.split(";")):
            name = frame.split(" (")[0] + " (" + frame.split(" (")[-1].split(":")[0].rsplit("/", 2)[-1] \
                if " (" in frame else frame
            inclusive[name] = inclusive.get(name, 0) + n
    lines = [f"  profile {folded.name}: {total} samples; largest inclusive shares:"]
    for name, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * n / max(1, total):5.1f}%  {name}")
    return "\n".join(lines)


def _start_profile(master_pid: int, out: Path, seconds: float) -> subprocess.Popen | None:
    spy = VENV_BIN / "py-spy"
    if not spy.exists():
        print("  (py-spy not installed: no profile)")
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(spy), "record", "--subprocesses", "--pid", str(master_pid), "--duration",  # noqa: S603
                             str(int(seconds)), "--format", "raw", "--output", str(out), "--nonblocking", "--gil"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
