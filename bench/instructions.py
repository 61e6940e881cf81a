"""``make bench-instructions``: the instructions one request costs the Python process (valgrind).

The same figure however busy the machine is.

``make bench``'s rates and CPU times move by a quarter or more from one run to the next on a shared
machine (docs/PERFORMANCE.md), so a change worth 5–15 % cannot be seen there. This counts instead:
each path and its reference runs in a process of its own under ``valgrind --tool=callgrind`` with
instrumentation off; after a warm-up (imports, first compilations, the pool's connections, psycopg's
prepared statements) the benchmark switches it on with ``callgrind_control``, the process sends
``--requests`` requests through Flask's test client, and it is switched off again. The instructions
counted, divided by the requests, are the Python process's own cost per request: the application,
Flask, SQLAlchemy, psycopg and libpq's client side and the Redis client (C extensions included) —
not PostgreSQL's or Redis's servers, not gunicorn's HTTP parsing (the test client stands in for it,
for the service and the reference alike). The same code gives the same count to within 0.5 % (hash seeds, garbage
collection); compare commits with it, and take the time figures from ``make bench``.

    .venv/bin/python -m bench.instructions                       # settlement, voucher, me: ≈ 2 min
    .venv/bin/python -m bench.instructions --only settlement --requests 100

It needs valgrind (Debian package ``valgrind``; ``callgrind_control`` comes with it), the local
PostgreSQL and Redis (``BENCH_DATABASE_URL``, ``BENCH_REDIS_URL``, as ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.run import HOSPITAL, HOSPITAL_SECRET, SETTLE_PATH, seed, service_env
from bench.scratch import ScratchDatabase, bench_redis, bench_server

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("settlement", "voucher", "me")
PHASES = {"settlement": ("settlement", "floor-settlement", "ref-settlement"),
          "voucher": ("voucher", "ref-voucher"), "me": ("me", "ref-me")}
WARMUP = 12


def _requests(kind: str, data: dict, start: int, count: int) -> list[tuple[str, str, dict, bytes | None, int]]:
    """(method, path, headers, body, expected status) for requests ``start`` … ``start + count - 1``."""
    from app.security.request_signing import sign

    out = []
    for i in range(start, start + count):
        if kind == "settlement":
            body = json.dumps({"out_settlement_no": "I" + uuid.uuid4().hex[:20], "voucher_code": data["codes"][i],
                               "items": [{"code": "D1", "name": "药品", "category": "drug", "in_catalogue": True,
                                          "amount_fen": 5_000}]}).encode()
            ts, nonce = str(int(time.time())), secrets.token_hex(16)
            out.append(("POST", SETTLE_PATH, {
                "X-Inst-Code": HOSPITAL, "X-Timestamp": ts, "X-Nonce": nonce, "Content-Type": "application/json",
                "X-Signature": sign(HOSPITAL_SECRET, "POST", SETTLE_PATH, ts, nonce, body)}, body, 201))
        elif kind == "floor-settlement":
            code_hash, institution_id, clearing_id = data["floor"][i]
            out.append(("POST", "/settle-rows", {"Content-Type": "application/json"}, json.dumps(
                {"code_hash": code_hash, "amount_fen": 5_000, "institution_id": institution_id,
                 "clearing_id": clearing_id}).encode(), 201))
        elif kind == "ref-settlement":
            out.append(("POST", "/settle", {"Content-Type": "application/json"},
                        json.dumps({"account_id": 1 + i % len(data["tokens"]), "amount_fen": 1}).encode(), 201))
        elif kind in ("voucher", "ref-voucher"):
            token, child = data["tokens"][i % len(data["tokens"])], data["children"][i % len(data["children"])]
            out.append(("POST", "/api/v1/vouchers" if kind == "voucher" else "/voucher",
                        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                        json.dumps({"person_id": child}).encode(), 201))
        elif kind in ("me", "ref-me"):
            out.append(("GET", "/api/v1/me" if kind == "me" else "/me",
                        {"Authorization": f"Bearer {data['tokens'][i % len(data['tokens'])]}"}, None, 200))
        else:
            raise ValueError(kind)
    return out


def child(kind: str, data_file: str, requests: int) -> None:
    """Runs under valgrind: warm up, say READY, wait; send the measured requests, say DONE, wait."""
    data = json.loads(Path(data_file).read_text())
    if kind.startswith(("ref-", "floor-")):
        from bench.baseline_app import app
    else:
        from app import create_app
        from app.config import Config

        app = create_app(Config.from_env())
    client = app.test_client()
    # Each settlement (and each floor row) takes a voucher of its own: 0 … WARMUP - 1 warm up.
    warm, measured = _requests(kind, data, 0, WARMUP), _requests(kind, data, WARMUP, requests)

    def send(batch: list) -> None:
        for method, path, headers, body, expected in batch:
            response = client.open(path, method=method, headers=headers, data=body)
            if response.status_code != expected:
                raise SystemExit(f"{kind}: {method} {path} answered {response.status_code}: "
                                 f"{response.get_data(as_text=True)[:300]}")

    send(warm)
    print("READY", flush=True)
    sys.stdin.readline()
    send(measured)
    print("DONE", flush=True)
    sys.stdin.readline()


def measure(kind: str, data_file: str, requests: int, env: dict[str, str]) -> float:
    """Instructions per request of ``kind``, in a process of its own under callgrind."""
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null",
         sys.executable, "-m", "bench.instructions", "--child", kind, "--data", data_file,
         "--requests", str(requests)],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None

    def expect(word: str) -> None:
        line = process.stdout.readline().strip()
        if line != word:
            process.kill()
            raise SystemExit(f"{kind}: expected {word}, got {line!r}; {process.communicate()[1][-2000:]}")

    def instrumentation(state: str) -> None:
        subprocess.run(["callgrind_control", "--instr=" + state, str(process.pid)], check=True,
                       capture_output=True, timeout=120)

    expect("READY")
    instrumentation("on")
    process.stdin.write("go\n")
    process.stdin.flush()
    expect("DONE")
    instrumentation("off")
    process.stdin.write("end\n")
    process.stdin.flush()
    _, err = process.communicate(timeout=300)
    found = re.search(r"Collected : (\d+)", err)
    if process.returncode != 0 or found is None:
        raise SystemExit(f"{kind}: valgrind ended with {process.returncode}: {err[-2000:]}")
    return int(found.group(1)) / requests


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PATHS),
                        help=f"paths, comma-separated, of {', '.join(PATHS)} (default: all; each with its reference)")
    parser.add_argument("--requests", type=int, default=60, help="measured requests per path (default 60)")
    parser.add_argument("--families", type=int, default=50, help="families seeded (default 50)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        child(options.child, options.data, options.requests)
        return
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian package valgrind)")
    asked = [p.strip() for p in options.only.split(",") if p.strip()]
    if not asked or set(asked) - set(PATHS):
        parser.error(f"--only takes {', '.join(PATHS)}; got {options.only!r}")
    only = [p for p in PATHS if p in asked]
    scratch = ScratchDatabase(bench_server())
    import redis as redis_lib

    redis_url = bench_redis()
    redis_lib.Redis.from_url(redis_url).flushdb()
    env = service_env(scratch.url, redis_url)
    data_file = Path(scratch.name + ".json").resolve()
    try:
        per = WARMUP + options.requests
        data = seed(env, options.families, per)
        data_file.write_text(json.dumps(data))
        scratch.analyze()
        results: dict[str, float] = {}
        for path in only:
            for kind in PHASES[path]:
                started = time.monotonic()
                results[kind] = measure(kind, str(data_file), options.requests, env)
                print(f"  {kind:<17} {results[kind] / 1e6:7.2f} M instructions / request "
                      f"({time.monotonic() - started:.0f} s)", flush=True)
        print()
        print("| path | service M instr / req | reference M instr / req | ratio (reference / service) |")
        print("|---|---:|---:|---:|")
        for path in only:
            reference = results[f"ref-{path}"]
            print(f"| {path} | {results[path] / 1e6:.2f} | {reference / 1e6:.2f} | {reference / results[path]:.2f}× |")
            if path == "settlement":
                floor = results["floor-settlement"]
                print(f"| settlement floor (same rows, no rules) | {floor / 1e6:.2f} | {reference / 1e6:.2f} | "
                      f"{reference / floor:.2f}× |")
        print(f"\n{options.requests} requests per path after {WARMUP} unmeasured; Python process only "
              f"(PostgreSQL's and Redis's servers are not counted)")
    finally:
        data_file.unlink(missing_ok=True)
        scratch.drop()
        redis_lib.Redis.from_url(redis_url).flushdb()


if __name__ == "__main__":
    main()
