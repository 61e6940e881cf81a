"""``make bench``'s load generator (bench/loadgen.py, bench/wrk_requests.lua, bench/run.py's
rendering): requests rendered beforehand are ones the service accepts, each is sent once, and what
wrk reports is read back right."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench import loadgen
from bench.run import SETTLE_PATH, Phase, drive_wrk, render_requests
from bench.settlement import seed_families

needs_wrk = pytest.mark.skipif(loadgen.wrk_path() is None, reason="wrk is not installed (apt-get install wrk)")


def _parse(raw: bytes) -> tuple[str, str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode().split("\r\n")
    method, path, version = request_line.split(" ")
    assert version == "HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in header_lines)
    assert int(headers["Content-Length"]) == len(body)
    return method, path, headers, body


def test_rendered_settlements_are_accepted_by_the_service_once_each(app) -> None:
    _pairs, codes = seed_families(app, 2, 4, 1_000_000, datetime.now(UTC))
    requests, expected = render_requests("settlement", codes, "127.0.0.1:8000")
    assert expected == 201 and len(requests) == 4
    parsed = [_parse(raw) for raw in requests]
    assert len({headers["X-Nonce"] for _m, _p, headers, _b in parsed}) == 4
    client = app.test_client()
    for method, path, headers, body in parsed:
        assert (method, path) == ("POST", SETTLE_PATH)
        response = client.open(path, method=method, headers=headers, data=body)
        assert response.status_code == 201, response.get_json()
        assert response.get_json()["status"] == "settled"
    method, path, headers, body = parsed[0]  # the same bytes again: refused, so none may be sent twice
    replay = client.open(path, method=method, headers=headers, data=body)
    assert replay.status_code == 401


def test_a_changed_body_breaks_the_signature(app) -> None:
    _pairs, codes = seed_families(app, 1, 1, 1_000_000, datetime.now(UTC))
    (raw,), _ = render_requests("settlement", codes, "127.0.0.1:8000")
    method, path, headers, body = _parse(raw)
    tampered = body.replace(b"5000", b"5001")
    headers["Content-Length"] = str(len(tampered))
    assert app.test_client().open(path, method=method, headers=headers, data=tampered).status_code == 401


def test_render_and_slices(tmp_path: Path) -> None:
    raw = loadgen.render("GET", "/me", {"Authorization": "Bearer t"}, None, "h:1")
    assert raw == b"GET /me HTTP/1.1\r\nHost: h:1\r\nAuthorization: Bearer t\r\n\r\n"
    counts = loadgen.write_slices(tmp_path / "r", [b"a" * i for i in range(1, 8)], 3)
    assert counts == [3, 2, 2]
    assert (tmp_path / "r.0").read_bytes() == b"1\na4\naaaa7\naaaaaaa"
    assert (tmp_path / "r.2").read_bytes() == b"3\naaa6\naaaaaa"
    with pytest.raises(ValueError, match="fewer requests than clients"):
        loadgen.write_slices(tmp_path / "s", [b"x"], 2)


WRK_OUTPUT = """Running 8s test @ http://127.0.0.1:40001
  2 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    13.40ms    4.10ms  40.00ms   80.00%
  Requests/sec:   1193.75
bench-wrk {"sent":9,"ok":6,"errors":2,"exhausted":1,"duration_us":8004100,"responses":8,\
"socket_errors":{"connect":0,"read":1,"write":0,"timeout":0},"statuses":{"201":6,"409":1,"500":1},\
"positions":[5,4],"sample":"409 {\\"code\\": \\"CONFLICT\\u0022}","latencies_us":[1500,2250,900,1000,1200,40000]}
"""


def test_parse_output() -> None:
    run = loadgen.parse_output(WRK_OUTPUT)
    assert (run.sent, run.ok, run.errors, run.exhausted, run.positions) == (9, 6, 2, 1, [5, 4])
    assert run.seconds == pytest.approx(8.0041)
    assert run.statuses == {201: 6, 409: 1, 500: 1}
    assert run.sample == '409 {"code": "CONFLICT"}'
    assert run.latencies_ms == [1.5, 2.25, 0.9, 1.0, 1.2, 40.0]
    assert run.lost == 1
    with pytest.raises(RuntimeError, match="no result line"):
        loadgen.parse_output("unable to connect to 127.0.0.1:1 Connection refused\n")


# --------------------------------------------------------------------------- the Lua script, through wrk


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: Counter[bytes] = Counter()
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn's gthread workers

    def do_POST(self) -> None:  # noqa: N802 — http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.received[body] += 1  # type: ignore[attr-defined]
        time.sleep(0.002)
        status = 409 if body.startswith(b"bad") else 201
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _bodies(n: int, bad: set[int] = frozenset()) -> list[bytes]:
    return [(b"bad-%d" if i in bad else b"ok-%d") % i for i in range(n)]


def _requests(bodies: list[bytes]) -> list[bytes]:
    return [loadgen.render("POST", "/x", {"Content-Type": "text/plain"}, b, "127.0.0.1") for b in bodies]


@needs_wrk
def test_each_request_is_sent_once_and_counted(server: _Server, tmp_path: Path) -> None:
    bodies = _bodies(40, bad={7, 22})
    loadgen.write_slices(tmp_path / "r", _requests(bodies), 4)
    run = loadgen.run_wrk(f"http://127.0.0.1:{server.server_port}", tmp_path / "r", 4, 1, 201, cycle=False)
    assert server.received == Counter(bodies)  # every one, once: wrk's check of the script sent nothing
    assert (run.sent, run.ok, run.errors, run.exhausted) == (40, 38, 2, 4)
    assert run.statuses == {201: 38, 409: 2}
    assert run.sample.startswith("409 bad-")
    assert run.positions == [10, 10, 10, 10]
    assert len(run.latencies_ms) == 38 and all(0 < ms < 1000 for ms in run.latencies_ms)
    assert run.cpu_seconds > 0
    again = loadgen.run_wrk(f"http://127.0.0.1:{server.server_port}", tmp_path / "r", 4, 1, 201, cycle=False,
                            offsets=run.positions)
    assert (again.sent, again.ok) == (0, 0) and server.received == Counter(bodies)


@needs_wrk
def test_a_run_starts_where_the_last_one_stopped(server: _Server, tmp_path: Path) -> None:
    bodies = _bodies(40)
    loadgen.write_slices(tmp_path / "r", _requests(bodies), 4)
    run = loadgen.run_wrk(f"http://127.0.0.1:{server.server_port}", tmp_path / "r", 4, 1, 201, cycle=False,
                          offsets=[5, 8, 10, 0])
    # thread k's file holds bodies k, k+4, k+8, …; the first offsets[k] of them are skipped
    assert set(server.received) == {b for i, b in enumerate(bodies) if i // 4 >= [5, 8, 10, 0][i % 4]}
    assert run.sent == 5 + 2 + 0 + 10 and max(server.received.values()) == 1


@needs_wrk
def test_repeatable_requests_go_round(server: _Server, tmp_path: Path) -> None:
    loadgen.write_slices(tmp_path / "r", _requests(_bodies(4)), 2)
    run = loadgen.run_wrk(f"http://127.0.0.1:{server.server_port}", tmp_path / "r", 2, 1, 201, cycle=True)
    assert run.exhausted == 0 and run.sent > 20 and set(server.received) == set(_bodies(4))


@needs_wrk
def test_drive_wrk_warms_up_then_measures_without_sending_a_request_twice(server: _Server,
                                                                           tmp_path: Path) -> None:
    bodies = _bodies(3000)
    phase = drive_wrk("settlement", server.server_port, _requests(bodies), 201, 4, 1, 1, tmp_path)
    assert max(server.received.values()) == 1
    assert phase.requests_total == sum(server.received.values())
    assert 0 < phase.ok <= phase.requests_total and phase.errors == 0
    assert phase.seconds == pytest.approx(1.0, abs=0.3) and phase.client_cpu_seconds > 0
    assert not list(tmp_path.iterdir())  # the request files are removed after the phase


def test_in_flight_is_the_rate_times_the_mean_latency() -> None:
    phase = Phase(ok=200, seconds=2.0, latencies_ms=[100.0] * 100 + [300.0] * 100)
    assert phase.in_flight == pytest.approx(20.0)  # 100/s × 0.2 s
    assert Phase().in_flight == 0.0
