"""Benchmark: deduction notices — pushes per second of ``notify-worker`` against the local emulator,
and the delay from the commit of a settlement to its push (p50/p99) at a fixed rate.

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
    BENCH_REDIS_URL=redis://127.0.0.1:6379/6 \\
        .venv/bin/python -m bench.notify [--backlog 1000] [--rate 100] [--seconds 20] [--workers 1,2,4]
                                         [--producer settlement|notices] [--producers 4] [--mode rq|inprocess]

A scratch database is created on the PostgreSQL server (dropped afterwards); BENCH_REDIS_URL must
name a Redis database the benchmark may empty (default database 6, as every benchmark's:
``bench.scratch.bench_redis``; give two benchmarks run at once two databases). The emulator runs in
this process; with ``--mode rq`` each worker is a separate ``flask --app wsgi notify-worker``
process (hand-over thread, RQ SimpleWorker, sweeper, 8 send threads); with ``--mode inprocess`` (no
Redis, ``--workers`` ignored) there are no workers: each producer process hands what it commits to
its own notifier's send threads and sweeper, as each web process of a deployment without Redis
does, and the CPU those threads spend is the "workers' CPU" (this process's pool drains the backlog).

1. Backlog: ``--backlog`` settlements are committed (one owner with a long-term subscription
   each, so one WeChat push each), then one worker drains them (``--burst``): pushes per second,
   for deliveries handed over at commit and for rows only the sweeper finds (Redis was down).
2. Latency, for each ``--workers`` count and each ``--rate``: with the workers running,
   ``--producers`` processes commit at the fixed rate for ``--seconds`` — an open loop: each
   commit has its scheduled time, and a producer that falls behind does not slow the schedule
   down, it commits late (reported as the schedule lag and the rate reached). Each push's delay is
   the emulator's receive time minus the time its transaction committed.
   ``--producer settlement`` commits a voucher, a settlement and its notices in one transaction
   (the notice part through ``notify.outbox.add_money_notices``, as the settlement engine does);
   ``--producer notices`` has the settlements made beforehand and commits only their notices and
   deliveries — the same rows and hand-over at a fraction of the cost, for rates the machine
   cannot settle at while the workers run. Every commit is followed by ``notifier.committed``.
   Reported: the rate reached, commit→push p50/p99/max, the backlog (committed, not yet pushed)
   at its largest and when the producers stop, the workers' CPU per push (from /proc) and how
   long the last push took after the last commit.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import multiprocessing
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import insert, select

from app.config import ROOT
from app.security.id_number import make_id_number
from bench.scratch import ScratchDatabase, bench_redis, bench_server

WECHAT_APPID = "wxbench000000001"
WECHAT_SECRET = "bench-wechat-secret"
ALIPAY_APPID = "2021000000009999"
TEMPLATE = "bench-deduction"
OWNERS = 50
_TICKS = os.sysconf("SC_CLK_TCK")


def _key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


class Bench:
    def __init__(self, db_url: str, redis_url: str | None, sandbox: Any):
        app_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = app_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        public = app_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        sandbox.register_wechat_app(WECHAT_APPID, WECHAT_SECRET, templates=[TEMPLATE])
        sandbox.register_alipay_app(ALIPAY_APPID, public, templates=[])
        self.sandbox = sandbox
        self.settings: dict[str, Any] = {
            "DATABASE_URL": db_url, "SECRET_KEY": secrets.token_urlsafe(16), "PII_KEY": _key(),
            "VOUCHER_KEY": _key(), "PLEDGE_SIGNING_KEY": _key(), "WECHAT_APPID": WECHAT_APPID,
            "WECHAT_SECRET": WECHAT_SECRET, "WECHAT_API_BASE_URL": sandbox.wechat_api_base_url,
            "WECHAT_TEMPLATE_DEDUCTION": TEMPLATE, "WECHAT_MSG_TOKEN": "bench-token", "ALIPAY_APPID": ALIPAY_APPID,
            "ALIPAY_APP_PRIVATE_KEY": pem, "ALIPAY_PUBLIC_KEY": sandbox.alipay_public_key_pem,
            "ALIPAY_GATEWAY_URL": sandbox.alipay_gateway_url, "LOG_LEVEL": "WARNING",
        }
        if redis_url:
            self.settings["REDIS_URL"] = redis_url
        from app import create_app
        from app.config import Config

        self.app = create_app(Config.from_env(env={}, **self.settings))
        self.ctx = self.app.app_context()
        self.ctx.push()
        self.notifier = self.app.extensions["domain"].notifier
        self.commit_times: dict[str, float] = {}
        self._serials = itertools.count(1)

    def seed(self) -> None:
        from app.extensions import app_session
        from app.services.registry import load_registry
        from models import Consent, Institution, Person, User

        people = [make_id_number("532621", date(1960, 1, 1) + timedelta(days=i), i % 1000) for i in range(OWNERS + 1)]
        registry = {
            "as_of": datetime.now(UTC).isoformat(),  # a snapshot taken now (load-registry requires it)
            "persons": [{"id_number": p, "name": f"参保人{i}", "social_card_no": f"M{i:012d}",
                         "insurance_type": "employee", "region_code": "532621", "status": "active"}
                        for i, p in enumerate(people)],
            "accounts": [{"id_number": p, "balance_fen": 10_000_000} for p in people],
            "households": [],
            "institutions": [{"code": "HBENCH01", "name": "文山州人民医院", "kind": "hospital",
                              "region_code": "532601", "designated": True, "api_secret": secrets.token_hex(16)}],
        }
        now = datetime.now(UTC)
        pii = self.app.extensions["domain"].pii
        with app_session() as session:
            load_registry(session, pii, registry, now)
        with app_session() as session, session.begin():
            person_ids = [session.scalar(select(Person.id).where(
                Person.id_number_bidx == pii.blind_index(p, kind="id_number"))) for p in people]
            self.institution_id = session.scalar(select(Institution.id))
            self.beneficiary = person_ids[-1]
            self.owners = person_ids[:-1]
            for person_id in self.owners:
                openid = f"obench{person_id:020d}"
                self.sandbox.issue_wechat_login_code(openid)
                self.sandbox.grant_wechat_consent(openid, TEMPLATE, mode="long_term")
                user_id = session.execute(insert(User).values(
                    channel="wechat", wechat_openid=openid, person_id=person_id, verified_at=now,
                    last_login_at=now, created_at=now).returning(User.id)).scalar_one()
                session.execute(insert(Consent).values(user_id=user_id, channel="wechat", template_id=TEMPLATE,
                                                       one_time_credits=0, long_term="accept", created_at=now))

    def _settlement_rows(self, serial: int, now: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
        number = f"B{serial:015d}"
        voucher = {"code_hash": secrets.token_hex(32), "person_id": self.beneficiary,
                   "holder_person_id": self.beneficiary, "expires_at": now + timedelta(minutes=2), "used_at": now,
                   "created_at": now}
        settlement = {
            "settlement_no": number, "institution_id": self.institution_id, "out_settlement_no": number,
            "request_hash": secrets.token_hex(32), "beneficiary_person_id": self.beneficiary, "service_time": now,
            "status": "settled", "total_fen": 1230, "eligible_fen": 1230, "own_account_fen": 0, "copay_fen": 1230,
            "cash_fen": 0, "refunded_fen": 0, "items": [], "reasons": [], "response": {}, "created_at": now,
        }
        return voucher, settlement

    def premade_settlements(self, count: int) -> list[tuple[int, int, str]]:
        """``count`` settlements committed now, without notices: (serial, settlement id, number)."""
        from app.extensions import app_session
        from models import Settlement, Voucher

        now = datetime.now(UTC)
        made: list[tuple[int, int, str]] = []
        for start in range(0, count, 1000):
            serials = [next(self._serials) for _ in range(min(1000, count - start))]
            rows = [self._settlement_rows(serial, now) for serial in serials]
            with app_session() as session, session.begin():
                connection = session.connection()
                voucher_ids = connection.execute(
                    insert(Voucher.__table__).returning(Voucher.__table__.c.id, sort_by_parameter_order=True),
                    [voucher for voucher, _ in rows]).scalars().all()
                settlement_ids = connection.execute(
                    insert(Settlement.__table__).returning(Settlement.__table__.c.id, sort_by_parameter_order=True),
                    [{**settlement, "voucher_id": voucher_id}
                     for (_, settlement), voucher_id in zip(rows, voucher_ids, strict=True)]).scalars().all()
            made += [(serial, settlement_id, settlement["settlement_no"])
                     for serial, settlement_id, (_, settlement) in zip(serials, settlement_ids, rows, strict=True)]
        return made

    def settle(self, notify: bool = True, premade: tuple[int, int, str] | None = None) -> str:
        """One settlement of one owner's co-pay committed with its notices (or, for a ``premade``
        settlement, only its notices), as the engine does; then the hand-over."""
        from app.extensions import app_session
        from models import Settlement, Voucher
        from notify.outbox import AccountMovement, MoneyEvent, add_money_notices

        now = datetime.now(UTC)
        with app_session() as session, session.begin():
            if premade is None:
                serial = next(self._serials)
                voucher, settlement = self._settlement_rows(serial, now)
                voucher_id = session.execute(insert(Voucher).values(**voucher).returning(Voucher.id)).scalar_one()
                settlement_id = session.execute(insert(Settlement).values(**settlement, voucher_id=voucher_id)
                                                .returning(Settlement.id)).scalar_one()
                number = settlement["settlement_no"]
            else:
                serial, settlement_id, number = premade
            owner = self.owners[serial % len(self.owners)]
            ids = add_money_notices(session, MoneyEvent(settlement_id, number, self.beneficiary, "**明",
                                                        "文山州人民医院", now, relationships={owner: "child"}),
                                    [AccountMovement(owner, "copay", 1230, 10_000_000 - 1230 * (serial % 8000))])
        self.commit_times[number] = time.time()
        if notify:
            self.notifier.committed(ids)
        return number

    def worker(self, burst: bool, log_path: str) -> subprocess.Popen:
        env = {**os.environ, **{k: str(v) for k, v in self.settings.items()}, "LOG_LEVEL": "WARNING"}
        args = [sys.executable, "-m", "flask", "--app", "wsgi", "notify-worker"] + (["--burst"] if burst else [])
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=open(log_path, "w"))  # noqa: SIM115 — the child keeps it

    def delivered(self, numbers: set[str]) -> dict[str, float]:
        return {m.data["character_string8"]: m.sent_at for m in self.sandbox.sent_messages(platform="wechat")
                if m.data.get("character_string8") in numbers}


def _wait(bench: Bench, numbers: set[str], timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        found = bench.delivered(numbers)
        if len(found) == len(numbers) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# Inherited by the forked producer processes.
_BENCH: Any = None
_PREMADE: list[tuple[int, int, str]] = []
_COMMITTED: Any = None  # multiprocessing.Value: settlements committed so far in this phase
_WORKERS: list[subprocess.Popen] = []


def _delivery_cpu_seconds() -> float:
    """User + system CPU of this process's threads other than the calling one, ended ones included
    (Linux ``getrusage``): in a producer of ``--mode inprocess``, its notifier's send threads and sweeper."""
    process = resource.getrusage(resource.RUSAGE_SELF)
    caller = resource.getrusage(resource.RUSAGE_THREAD)
    return process.ru_utime + process.ru_stime - caller.ru_utime - caller.ru_stime


def _produce(args: tuple[int, int, float, float, float, int, int, bool]) -> tuple[dict[str, float], list[float],
                                                                                 float]:
    """One producer process: commit at rate/producers on a fixed schedule until the end.

    Returns number → commit time, how late each commit started against its schedule (s), and — when
    it delivers in process — the CPU its notifier's threads spent (s), once they have sent everything."""
    k, producers, rate, started, seconds, premade_from, phase, in_process = args
    delivery_before = _delivery_cpu_seconds()
    bench = _BENCH
    bench.app.extensions["db.engine"].dispose(close=False)  # never share the parent's connections
    bench.commit_times = {}
    # Settlement numbers unique across producers and phases.
    bench._serials = itertools.count(100_000_000 * (phase + 1) + 10_000_000 * k)
    count = int(seconds * rate / producers)
    premade = _PREMADE[premade_from + k::producers] if _PREMADE else None
    lags = []
    with bench.app.app_context():
        for i in range(count):
            at = started + (k + i * producers) / rate
            delay = at - time.time()
            if delay > 0:
                time.sleep(delay)
            lags.append(max(0.0, -delay))
            bench.settle(premade=premade[i] if premade else None)
            with _COMMITTED.get_lock():
                _COMMITTED.value += 1
    if not in_process:
        return bench.commit_times, lags, 0.0
    bench.notifier.stop()  # waits for the send threads: this process's deliveries are all made
    return bench.commit_times, lags, _delivery_cpu_seconds() - delivery_before


@dataclass
class Row:
    workers: int
    rate: float
    reached: float
    lag_p99_ms: float
    committed: int
    pushed: int
    p50: float
    p99: float
    max: float
    backlog_peak: int
    backlog_end: int
    drain_s: float
    cpu_per_push_ms: float
    load: tuple[float, float]


def _profile(pid: int, seconds: float, out: str) -> subprocess.Popen | None:
    """py-spy (when installed) on one worker for the phase: folded stacks of the samples holding the GIL."""
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        print("  (py-spy not installed: no profile)")
        return None
    os.makedirs(os.path.dirname(out), exist_ok=True)
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--format", "raw",
                             "--output", out, "--nonblocking", "--gil"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _phase(bench: Bench, mode: str, workers: int, rate: float, seconds: float, producers: int,
           log_dir: str, premade_from: int, profile: str | None, phase: int) -> Row:
    global _BENCH, _COMMITTED
    pool = [bench.worker(burst=False, log_path=f"{log_dir}/w{workers}-r{rate:g}-{i}.log") for i in range(workers)] \
        if mode == "rq" else []
    _WORKERS.extend(pool)  # stopped in ``run``'s finally even if this phase fails
    # Warm: every worker up (a hand-over each, so each has fetched its token), no backlog.
    warm = {bench.settle() for _ in range(max(1, 3 * workers))}
    if len(_wait(bench, warm, timeout=120)) != len(warm):
        raise RuntimeError("the workers did not start")
    if mode != "rq":
        bench.notifier.stop()  # the producers deliver: each starts its own threads (none survive a fork)
    time.sleep(1.0)
    cpu_before = sum(_cpu_seconds(w.pid) for w in pool)
    _BENCH, _COMMITTED = bench, multiprocessing.Value("l", 0)
    load_before = os.getloadavg()[0]
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()

    def sample() -> None:  # committed − pushed, every 0.25 s
        while not stop.wait(0.25):
            pushed = len(bench.sandbox.sent_messages(platform="wechat")) - base
            samples.append((time.time(), _COMMITTED.value, pushed))

    base = len(bench.sandbox.sent_messages(platform="wechat"))
    sampler = threading.Thread(target=sample, daemon=True)
    started = time.time() + 0.5
    sampler.start()
    spy = _profile(pool[0].pid, seconds, f"{profile}/worker-w{workers}-r{rate:g}.folded") if profile and pool else None
    with multiprocessing.get_context("fork").Pool(producers) as producer_pool:
        parts = producer_pool.map(_produce, [(k, producers, rate, started, seconds, premade_from, phase,
                                              mode != "rq") for k in range(producers)])
    produced_until = time.time()
    if spy is not None:
        spy.wait(timeout=60)
    commit_times = {n: t for part, _lags, _cpu in parts for n, t in part.items()}
    lags = [lag for _part, part_lags, _cpu in parts for lag in part_lags]
    last_commit = max(commit_times.values())
    found = _wait(bench, set(commit_times), timeout=180)
    stop.set()
    sampler.join()
    cpu = sum(_cpu_seconds(w.pid) for w in pool) - cpu_before if pool else sum(cpu for _p, _l, cpu in parts)
    load_after = os.getloadavg()[0]
    for worker in pool:
        worker.terminate()
    for worker in pool:
        worker.wait(timeout=60)
    bench.commit_times.update(commit_times)
    delays = [(found[n] - commit_times[n]) * 1000 for n in found]
    first_commit = min(commit_times.values())
    at_end = [committed - pushed for t, committed, pushed in samples if t <= produced_until]
    return Row(workers, rate, len(commit_times) / (last_commit - first_commit) if len(commit_times) > 1 else 0.0,
               _percentile(lags, 99) * 1000, len(commit_times), len(found), _percentile(delays, 50),
               _percentile(delays, 99), max(delays, default=float("nan")),
               max((c - p for _t, c, p in samples), default=0), at_end[-1] if at_end else 0,
               (max(found.values()) - last_commit) if found else float("nan"),
               cpu * 1000 / len(found) if found else float("nan"), (load_before, load_after))


def run(mode: str, backlog: int, rates: list[float], seconds: float, workers: list[int], producers: int,
        producer: str, profile: str | None = None) -> list[Row]:
    from app.config import Config  # noqa: F401 — imported early so import time is not measured
    from models import Base
    from sandbox import Sandbox

    global _PREMADE
    redis_url = bench_redis() if mode == "rq" else None
    scratch = ScratchDatabase(bench_server(), "copay_bench_notify")
    sandbox = Sandbox().start()
    log_dir = tempfile.mkdtemp(prefix="bench-notify-")
    try:
        if redis_url:
            import redis

            redis.Redis.from_url(redis_url).flushdb()
        bench = Bench(scratch.url, redis_url, sandbox)
        Base.metadata.create_all(bench.app.extensions["db.engine"])
        bench.seed()
        print(f"mode={mode}  producer={producer} x{producers}  rates={rates}/s for {seconds:.0f} s  "
              f"workers={workers}  cpus={os.cpu_count()}  load={os.getloadavg()[0]:.2f}  "
              f"started {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", flush=True)

        # 1. backlog → pushes per second: (a) handed over at commit while no worker ran; (b) rows
        # never handed over (Redis was down): the sweep finds them and queues RQ jobs of 25.
        phases = [("handed over at commit", True), ("swept from the database", False)] if mode == "rq" else [
            ("swept from the database", False)]
        for label, handed in phases if backlog else ():
            numbers = {bench.settle(notify=handed) for _ in range(backlog)}
            started = time.perf_counter()
            cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            if mode == "rq":
                bench.worker(burst=True, log_path=f"{log_dir}/burst.log").wait()
            else:
                bench.notifier.start()
            found = _wait(bench, numbers, timeout=900)
            if mode != "rq":
                bench.notifier.stop()
            wall = time.perf_counter() - started
            cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime) * 1000
            span = max(found.values()) - min(found.values())
            worker_cpu = f"; worker CPU {cpu / len(found):.1f} ms per push" if mode == "rq" else ""
            print(f"backlog {label}: {len(found)}/{backlog} pushed in {wall:.1f} s wall (incl. worker start) = "
                  f"{len(found) / wall:.0f}/s; {len(found) / span:.0f}/s between first and last push{worker_cpu}",
                  flush=True)
        if mode != "rq":
            print("(in-process mode: each producer delivers on its own notifier's threads; --workers is ignored)")

        # 2. fixed rate → commit-to-push delay
        plan = [(w, r) for w in (workers if mode == "rq" else [0]) for r in rates]
        if producer == "notices":
            _PREMADE = bench.premade_settlements(sum(int(seconds * r) + producers for _w, r in plan))
        rows = []
        premade_from = 0
        for phase, (w, r) in enumerate(plan):
            row = _phase(bench, mode, w, r, seconds, producers, log_dir, premade_from, profile, phase)
            premade_from += row.committed
            rows.append(row)
            print(f"workers {w}, {r:g}/s scheduled: {row.committed} committed at {row.reached:.0f}/s "
                  f"(schedule lag p99 {row.lag_p99_ms:.0f} ms), {row.pushed} pushed; commit→push p50 "
                  f"{row.p50:.0f} ms, p99 {row.p99:.0f} ms, max {row.max:.0f} ms; backlog peak {row.backlog_peak}, "
                  f"at the producers' end {row.backlog_end}; last push {row.drain_s:.1f} s after the last "
                  f"commit; workers' CPU {row.cpu_per_push_ms:.1f} ms/push; load {row.load[0]:.1f}→"
                  f"{row.load[1]:.1f}", flush=True)
        duplicates = len(bench.sandbox.sent_messages(platform="wechat")) - len(
            {m.data.get("character_string8") for m in bench.sandbox.sent_messages(platform="wechat")})
        print("\n| workers | scheduled /s | committed /s (schedule lag p99) | commit → push p50 / p99 / max | "
              "backlog peak (at end) | last push after last commit | workers' CPU / push |\n"
              "|---:|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            print(f"| {row.workers} | {row.rate:g} | {row.reached:.0f} ({row.lag_p99_ms:.0f} ms) | "
                  f"{row.p50:.0f} / {row.p99:.0f} / {row.max:.0f} ms | {row.backlog_peak} ({row.backlog_end}) | "
                  f"{row.drain_s:.1f} s | {row.cpu_per_push_ms:.1f} ms |")
        print(f"pushes beyond one per settlement: {duplicates}")
        bench.ctx.pop()
        bench.app.extensions["db.engine"].dispose()
        return rows
    finally:
        for worker in _WORKERS:
            if worker.poll() is None:
                worker.kill()
        sandbox.stop()
        scratch.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("rq", "inprocess"), default="rq")
    parser.add_argument("--backlog", type=int, default=1000)
    parser.add_argument("--rate", default="100", help="settlements per second, or a comma-separated list")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", default="2", help="notify-worker processes (rq mode), or a comma-separated list")
    parser.add_argument("--producers", type=int, default=4, help="processes committing settlements")
    parser.add_argument("--producer", choices=("settlement", "notices"), default="settlement",
                        help="commit voucher + settlement + notices, or notices of premade settlements")
    parser.add_argument("--profile", default=None, help="directory for py-spy folded stacks of the first worker")
    args = parser.parse_args()
    run(args.mode, args.backlog, [float(r) for r in args.rate.split(",")], args.seconds,
        [int(w) for w in args.workers.split(",")], args.producers, args.producer, args.profile)


if __name__ == "__main__":
    main()
