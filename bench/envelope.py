"""What a request costs outside its view function: the service's envelope against a bare Flask app.

    .venv/bin/python -m bench.envelope [--requests 5000] [--log-level WARNING] [--profile out.prof]

Both apps are called in this process through their WSGI callable (no server, no sockets, no
database), one request at a time, and the CPU time per request is printed:

- ``GET  /probe``: a flask-smorest view with a response schema returning a small dict;
- ``POST /probe``: a flask-smorest view with the settlement's request schema (``arguments``), a
  signed-looking settlement body, returning a prepared JSON response (as the settlement view does);
- ``GET  /healthz``: a plain Flask view.

The service app is ``create_app`` (SQLite in a temporary directory, no Redis) with the probe views
registered like any blueprint, so every hook runs: the request log and id, the body check, metrics,
security headers, the Babel locale, the session interface. The bare app has the same three views
with none of that. The difference is the envelope; ``--profile`` writes a cProfile of the service
calls.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import io
import json
import os
import tempfile
import time
from typing import Any

from flask import Flask, jsonify, make_response, request

SETTLEMENT_BODY = json.dumps({
    "out_settlement_no": "B0123456789abcdef0123", "voucher_code": "1234567890123456789012345678",
    "items": [{"code": "D1", "name": "药品", "category": "drug", "in_catalogue": True, "amount_fen": 5000}],
}).encode()
ANSWER = {"settlement_no": "S1", "out_settlement_no": "B0123456789abcdef0123", "status": "settled",
          "total_fen": 5000, "eligible_fen": 5000, "own_account_fen": 0, "copay_fen": 5000, "cash_fen": 0}


def _key(seed: int) -> str:
    return base64.urlsafe_b64encode(bytes((seed + i) % 256 for i in range(32))).decode()


def service_app(log_level: str) -> Flask:
    from marshmallow import Schema, fields

    from app import create_app
    from app.config import Config
    from app.envelope import Blueprint
    from institution_api.settlements import SettlementRequestSchema

    directory = tempfile.mkdtemp(prefix="copay-envelope-")
    config = Config.from_env(env={
        "DATABASE_URL": f"sqlite:///{directory}/envelope.sqlite3", "DOCUMENT_DIR": directory,
        "SECRET_KEY": "envelope", "PII_KEY": _key(1), "VOUCHER_KEY": _key(2), "PLEDGE_SIGNING_KEY": _key(3),
        "PII_INDEX_KEY": _key(4), "LOG_LEVEL": log_level, "RATE_LIMIT_PER_USER": "off",
        "RATE_LIMIT_PER_IP": "off"})
    app = create_app(config)
    from models import Base

    Base.metadata.create_all(app.extensions["db.engine"])  # the in-process notifier's sweeper reads deliveries

    class Small(Schema):
        id = fields.Integer()
        channel = fields.String()
        verified = fields.Boolean()

    bp = Blueprint("envelope_probe", __name__)

    @bp.get("/probe")
    @bp.response(200, Small)
    def probe_get() -> dict[str, Any]:
        return {"id": 1, "channel": "wechat", "verified": True}

    @bp.post("/probe")
    @bp.arguments(SettlementRequestSchema)
    @bp.response(201, Small)
    def probe_post(body: dict[str, Any]) -> Any:
        return make_response(jsonify(ANSWER), 201)

    app.extensions["api"].register_blueprint(bp, url_prefix="/api/v1/envelope")
    return app


def bare_app() -> Flask:
    app = Flask("bare")

    @app.get("/api/v1/envelope/probe")
    def probe_get() -> Any:
        return jsonify(id=1, channel="wechat", verified=True)

    @app.post("/api/v1/envelope/probe")
    def probe_post() -> Any:
        request.get_json()
        return make_response(jsonify(ANSWER), 201)

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify(status="ok")

    return app


def environ(method: str, path: str, body: bytes | None) -> dict[str, Any]:
    headers = {"HTTP_HOST": "127.0.0.1:8000", "HTTP_USER_AGENT": "bench", "HTTP_ACCEPT": "*/*",
               "HTTP_CONNECTION": "keep-alive", "HTTP_X_INST_CODE": "H5326001", "HTTP_X_TIMESTAMP": "1765100000",
               "HTTP_X_NONCE": "0123456789abcdef0123456789abcdef", "HTTP_X_SIGNATURE": "0" * 64}
    base = {"REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
            "wsgi.errors": io.StringIO(), "wsgi.multithread": False, "wsgi.multiprocess": True,
            "wsgi.run_once": False, **headers}
    if body is not None:
        base.update({"CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body))})
    return base


def call(app: Flask, method: str, path: str, body: bytes | None) -> int:
    env = environ(method, path, body)
    env["wsgi.input"] = io.BytesIO(body or b"")
    status: list[str] = []
    chunks = app(env, lambda s, h, exc_info=None: status.append(s))
    try:
        b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return int(status[0].split()[0])


def measure(app: Flask, method: str, path: str, body: bytes | None, n: int,
            profile: cProfile.Profile | None = None) -> float:
    """CPU microseconds per request (after a warm-up)."""
    for _ in range(200):
        call(app, method, path, body)
    if profile is not None:
        profile.enable()
    started = time.process_time()
    for _ in range(n):
        call(app, method, path, body)
    spent = time.process_time() - started
    if profile is not None:
        profile.disable()
    return 1e6 * spent / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--log-level", default="WARNING", help="the service's LOG_LEVEL (bench/run.py: WARNING)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--profile", default=None, help="write a cProfile of the service's requests here")
    options = parser.parse_args(argv)
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    service, bare = service_app(options.log_level), bare_app()
    if options.log_level.upper() in ("DEBUG", "INFO"):
        import logging

        for handler in logging.getLogger().handlers:  # the lines are formatted, not shown
            if isinstance(handler, logging.StreamHandler):
                handler.stream = io.StringIO()
    probes: list[tuple[str, str, str, bytes | None, int]] = [
        ("GET /probe (response schema)", "GET", "/api/v1/envelope/probe", None, 200),
        ("POST /probe (settlement body)", "POST", "/api/v1/envelope/probe", SETTLEMENT_BODY, 201),
        ("GET /healthz", "GET", "/healthz", None, 200),
    ]
    profile = cProfile.Profile() if options.profile else None
    print(f"{options.requests} requests each, best of {options.repeat}; service LOG_LEVEL={options.log_level}")
    print(f"{'probe':<32} {'service µs':>11} {'bare µs':>9} {'envelope µs':>12}")
    for label, method, path, body, expected in probes:
        for app in (service, bare):
            status = call(app, method, path, body)
            if status != expected:
                raise SystemExit(f"{label}: {status} from {app.name}, expected {expected}")
        ours = min(measure(service, method, path, body, options.requests, profile) for _ in range(options.repeat))
        theirs = min(measure(bare, method, path, body, options.requests) for _ in range(options.repeat))
        print(f"{label:<32} {ours:11.0f} {theirs:9.0f} {ours - theirs:12.0f}", flush=True)
    if profile is not None:
        profile.dump_stats(options.profile)
        print(f"profile: {options.profile}")


if __name__ == "__main__":
    main()
