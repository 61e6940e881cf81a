"""The load generator of ``bench/run.py``: wrk sending requests rendered beforehand.

Every request of a phase is rendered (and, for a settlement, signed) in Python before the
measured window, as raw HTTP/1.1 bytes, and split into one file per client: ``write_slices``.
``run_wrk`` then starts ``wrk`` with one thread and one keep-alive connection per client and
``bench/wrk_requests.lua``, which sends each thread's requests in order (each once, or round and
round for requests that may be repeated), counts the statuses and measures each latency itself;
``parse_output`` reads the line its ``done()`` prints. The client's own CPU — what wrk took from
the two cores the servers and PostgreSQL share with it — is wrk's user + system time, from the
kernel's accounting of the finished process (``os.wait4``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

SCRIPT = Path(__file__).resolve().with_name("wrk_requests.lua")
MARKER = "bench-wrk "


def wrk_path() -> str | None:
    return shutil.which("wrk")


def render(method: str, path: str, headers: Mapping[str, str], body: bytes | None, host: str) -> bytes:
    """One HTTP/1.1 request as it goes on the wire (keep-alive, the body's exact length)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def write_slices(prefix: Path, requests: Iterable[bytes], clients: int) -> list[int]:
    """Deal ``requests`` round-robin into ``prefix.0`` … ``prefix.<clients-1>`` (records
    ``<length>\\n<bytes>``, as the Lua script reads them); return how many each file holds."""
    counts = [0] * clients
    files = [open(f"{prefix}.{k}", "wb") for k in range(clients)]  # noqa: SIM115 — closed below
    try:
        for i, raw in enumerate(requests):
            files[i % clients].write(b"%d\n" % len(raw) + raw)
            counts[i % clients] += 1
    finally:
        for f in files:
            f.close()
    if min(counts) == 0:
        raise ValueError(f"fewer requests than clients ({clients}): every client needs its own")
    return counts


@dataclass
class WrkRun:
    """What one wrk run reported (``bench-wrk`` line) and the CPU it used."""

    sent: int
    ok: int
    errors: int
    exhausted: int  # threads that ran out of requests (a run with each request sent once)
    seconds: float
    statuses: dict[int, int]
    positions: list[int]  # records each thread used: where a next run on the same files starts
    sample: str
    socket_errors: dict[str, int]
    latencies_ms: list[float] = field(repr=False)
    cpu_seconds: float = 0.0

    @property
    def lost(self) -> int:
        """Requests that got no response: connections that failed to connect, read or write."""
        return sum(self.socket_errors.get(name, 0) for name in ("connect", "read", "write"))


def parse_output(text: str) -> WrkRun:
    """Read the ``bench-wrk {json}`` line of ``wrk_requests.lua``'s ``done()`` out of wrk's output."""
    line = next((line for line in text.splitlines() if line.startswith(MARKER)), None)
    if line is None:
        raise RuntimeError("wrk printed no result line:\n" + text[-2000:])
    data = json.loads(line[len(MARKER):])
    return WrkRun(sent=data["sent"], ok=data["ok"], errors=data["errors"], exhausted=data["exhausted"],
                  seconds=data["duration_us"] / 1e6,
                  statuses={int(code): count for code, count in data["statuses"].items()},
                  positions=[int(p) for p in data["positions"]], sample=data["sample"],
                  socket_errors=data["socket_errors"], latencies_ms=[us / 1000 for us in data["latencies_us"]])


def run_wrk(url: str, prefix: Path, clients: int, seconds: int, expected: int, cycle: bool,
            offsets: list[int] | None = None, wrk: str | None = None) -> WrkRun:
    """``clients`` wrk threads, one connection each, for ``seconds`` whole seconds on the files of
    ``prefix``, each thread starting after ``offsets[k]`` records (what an earlier run used)."""
    command = [wrk or wrk_path() or "wrk", "-t", str(clients), "-c", str(clients), "-d", f"{max(1, seconds)}s",
               "--timeout", "30s", "-s", str(SCRIPT), url, "--", str(prefix), str(expected), "1" if cycle else "0",
               ",".join(str(o) for o in (offsets or [0] * clients))]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # noqa: S603
    assert process.stdout is not None
    output = process.stdout.read().decode(errors="replace")
    process.stdout.close()
    _pid, status, usage = os.wait4(process.pid, 0)  # the finished child's own CPU, nobody else's
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited with {process.returncode}:\n{output[-2000:]}")
    result = parse_output(output)
    result.cpu_seconds = usage.ru_utime + usage.ru_stime
    return result
