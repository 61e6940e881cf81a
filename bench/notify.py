"""Benchmark: notices delivered per second by one ``notify-worker`` against the local emulator, and
the delay from settlement commit to push (p50/p99).

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
    BENCH_REDIS_URL=redis://127.0.0.1:6379/14 \\
        .venv/bin/python -m bench.notify [--backlog 2000] [--rate 40] [--seconds 20] [--mode rq|inprocess]

A scratch database is created on the PostgreSQL server (dropped afterwards); BENCH_REDIS_URL must
name a Redis database the benchmark may empty. The emulator runs in this process; with ``--mode
rq`` the worker is a separate ``flask --app wsgi notify-worker`` process (one RQ SimpleWorker plus
its sweeper), with ``--mode inprocess`` (no Redis) this process delivers on its own thread pool.

1. Backlog: ``--backlog`` settlements are committed (one owner with a long-term subscription
   each, so one WeChat push each), then the worker drains them (``--burst``): pushes per second.
2. Latency: with the worker running, settlements are committed at ``--rate`` per second for
   ``--seconds``; each push's delay is the emulator's receive time minus the commit time.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import multiprocessing
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import make_url

from app.config import ROOT, normalize_database_url
from app.security.id_number import make_id_number

WECHAT_APPID = "wxbench000000001"
WECHAT_SECRET = "bench-wechat-secret"
ALIPAY_APPID = "2021000000009999"
TEMPLATE = "bench-deduction"
OWNERS = 50


def _key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


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

    def settle(self, notify: bool = True) -> str:
        """One settlement of one owner's co-pay, committed with its notices, as the engine does."""
        from app.extensions import app_session
        from models import Settlement, Voucher
        from notify.outbox import AccountMovement, MoneyEvent, add_money_notices

        serial = next(self._serials)
        owner = self.owners[serial % len(self.owners)]
        now = datetime.now(UTC)
        number = f"B{serial:015d}"
        with app_session() as session, session.begin():
            voucher_id = session.execute(insert(Voucher).values(
                code_hash=secrets.token_hex(32), person_id=self.beneficiary, holder_person_id=self.beneficiary,
                expires_at=now + timedelta(minutes=2), used_at=now, created_at=now).returning(Voucher.id)).scalar_one()
            settlement_id = session.execute(insert(Settlement).values(
                settlement_no=number, institution_id=self.institution_id, out_settlement_no=number,
                request_hash=secrets.token_hex(32), voucher_id=voucher_id, beneficiary_person_id=self.beneficiary,
                service_time=now, status="settled", total_fen=1230, eligible_fen=1230, own_account_fen=0,
                copay_fen=1230, cash_fen=0, refunded_fen=0, items=[], reasons=[], response={}, created_at=now,
            ).returning(Settlement.id)).scalar_one()
            ids = add_money_notices(session, MoneyEvent(settlement_id, number, self.beneficiary, "**明",
                                                        "文山州人民医院", now, relationships={owner: "child"}),
                                    [AccountMovement(owner, "copay", 1230, 10_000_000 - 1230 * (serial % 8000))])
        self.commit_times[number] = time.time()
        if notify:
            self.notifier.committed(ids)
        return number

    def worker(self, burst: bool, log_path: str) -> subprocess.Popen:
        env = {**os.environ, **{k: str(v) for k, v in self.settings.items()}, "LOG_LEVEL": "INFO"}
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


_BENCH: Any = None  # the Bench of this run, inherited by the forked producer processes
_WORKERS: list[subprocess.Popen] = []


def _produce(args: tuple[int, int, float, float, float]) -> dict[str, float]:
    """One producer process: settle at rate/producers until the end; return number → commit time."""
    k, producers, rate, started, seconds = args
    bench = _BENCH
    bench.app.extensions["db.engine"].dispose(close=False)  # never share the parent's connections
    bench.commit_times = {}
    bench._serials = itertools.count(10_000_000 * (k + 1))  # settlement numbers unique across producers
    interval = producers / rate
    next_at, end = started + k * interval / producers, started + seconds
    with bench.app.app_context():
        while next_at < end:
            time.sleep(max(0.0, next_at - time.time()))
            bench.settle()
            next_at += interval
    return bench.commit_times


def run(mode: str, backlog: int, rate: float, seconds: float, workers: int = 1, producers: int = 1) -> None:
    from app.config import Config  # noqa: F401 — imported early so import time is not measured
    from models import Base
    from sandbox import Sandbox

    server = normalize_database_url(os.environ.get("BENCH_DATABASE_URL",
                                                   "postgresql://postgres@127.0.0.1:5432/postgres"))
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14") if mode == "rq" else None
    name = f"copay_bench_notify_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    sandbox = Sandbox().start()
    log_dir = tempfile.mkdtemp(prefix="bench-notify-")
    try:
        if redis_url:
            import redis

            redis.Redis.from_url(redis_url).flushdb()
        bench = Bench(make_url(server).set(database=name).render_as_string(hide_password=False), redis_url, sandbox)
        Base.metadata.create_all(bench.app.extensions["db.engine"])
        bench.seed()
        print(f"mode={mode}  backlog={backlog}  rate={rate}/s for {seconds:.0f} s  cpus={os.cpu_count()}  "
              f"load={os.getloadavg()[0]:.2f}")

        # 1. backlog → pushes per second: (a) one job per settlement, queued at commit while the
        # worker was stopped; (b) rows that were never queued (Redis was down): the sweep batches them.
        phases = [("queued at commit", True), ("swept from the database", False)] if mode == "rq" else [
            ("swept from the database", False)]
        for label, queued in phases if backlog else ():
            numbers = {bench.settle(notify=queued) for _ in range(backlog)}
            started = time.perf_counter()
            cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            if mode == "rq":
                bench.worker(burst=True, log_path=f"{log_dir}/burst.log").wait()
            else:
                bench.notifier.start()
            found = _wait(bench, numbers, timeout=900)
            wall = time.perf_counter() - started
            cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime) * 1000
            span = max(found.values()) - min(found.values())
            worker_cpu = f"; worker CPU {cpu / len(found):.1f} ms per push" if mode == "rq" else ""
            print(f"backlog {label}: {len(found)}/{backlog} pushed in {wall:.1f} s wall (incl. worker start) = "
                  f"{len(found) / wall:.0f}/s; {len(found) / span:.0f}/s between first and last push{worker_cpu}")

        # 2. steady rate → commit-to-push delay
        pool = [bench.worker(burst=False, log_path=f"{log_dir}/worker{i}.log") for i in range(workers)] \
            if mode == "rq" else []
        _WORKERS.extend(pool)  # stopped in ``run``'s finally even if this phase fails
        _wait(bench, {bench.settle()}, timeout=60)  # warm: worker up, token fetched
        # Producer processes, each settling at rate/producers, staggered: one thread cannot commit
        # 100 settlements a second on a busy 2-core machine, and producer threads here would take
        # the GIL from the emulator's threads (the pushes' receiver) and slow the pushes down.
        global _BENCH
        _BENCH = bench
        started = time.time() + 0.5
        with multiprocessing.get_context("fork").Pool(producers) as producer_pool:
            parts = producer_pool.map(_produce, [(k, producers, rate, started, seconds) for k in range(producers)])
        numbers = {n for part in parts for n in part}
        print(f"producers committed {len(numbers)} settlements", flush=True)
        for part in parts:
            bench.commit_times.update(part)
        achieved = len(numbers) / (time.time() - started)
        found = _wait(bench, numbers, timeout=120)
        delays = [(found[n] - bench.commit_times[n]) * 1000 for n in found]
        span = (max(found.values()) - min(found.values())) if len(found) > 1 else 0.0
        print(f"pushes: {len(found) / span if span else 0:.0f}/s between first and last push")
        print(f"latency ({workers} worker(s), {achieved:.0f} settlements/s achieved): "
              f"{len(found)}/{len(numbers)} pushed; commit→push p50 {_percentile(delays, 50):.0f} ms, "
              f"p99 {_percentile(delays, 99):.0f} ms, max {max(delays):.0f} ms, "
              f"mean {statistics.fmean(delays):.0f} ms")
        duplicates = len(bench.sandbox.sent_messages(platform="wechat")) - len(bench.commit_times)
        print(f"pushes beyond one per settlement: {duplicates}")
        for worker in pool:
            worker.terminate()
        for worker in pool:
            worker.wait(timeout=30)
        if mode != "rq":
            bench.notifier.stop()
        bench.ctx.pop()
        bench.app.extensions["db.engine"].dispose()
    finally:
        for worker in _WORKERS:
            if worker.poll() is None:
                worker.kill()
        sandbox.stop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("rq", "inprocess"), default="rq")
    parser.add_argument("--backlog", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1, help="notify-worker processes (rq mode)")
    parser.add_argument("--producers", type=int, default=1, help="processes committing settlements")
    args = parser.parse_args()
    run(args.mode, args.backlog, args.rate, args.seconds, args.workers, args.producers)


if __name__ == "__main__":
    main()
