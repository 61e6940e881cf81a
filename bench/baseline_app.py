"""The benchmark's reference: only the bare transactions the hot paths cannot do without, as a
minimal Flask app with SQLAlchemy Core under the same engine settings as the service.

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/copay_bench_x \\
        .venv/bin/gunicorn -w 4 -b 127.0.0.1:8101 bench.baseline_app:app

- ``POST /settle {"account_id": n, "amount_fen": x}``: lock the account, debit it, insert a ledger
  row and an outbox row, commit, answer JSON;
- ``POST /voucher {"person_id": n}`` (bearer token): look the token up, insert one voucher row, commit;
- ``GET /me`` (bearer token): look the token up joined to its user, answer JSON.

No signature, no validation, no plan, no rules, no audit — what is left when everything the service
adds is taken away. ``bench/run.py`` creates its tables (``bench_*``) and drives it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from datetime import UTC, datetime

from flask import Flask, jsonify, request
from sqlalchemy import text

from app.config import normalize_database_url
from app.extensions import make_engine

app = Flask(__name__)
engine = make_engine(normalize_database_url(os.environ.get("BENCH_DATABASE_URL", "")))

_LOCK = text("SELECT balance_fen FROM bench_accounts WHERE id = :id FOR UPDATE")
_DEBIT = text("UPDATE bench_accounts SET balance_fen = balance_fen - :x WHERE id = :id")
_ROW = text("INSERT INTO bench_rows (account_id, amount_fen, created_at) VALUES (:id, :x, :at) RETURNING id")
_OUTBOX = text("INSERT INTO bench_outbox (row_id, payload, created_at) VALUES (:row, :payload, :at)")
_TOKEN = text("SELECT u.id, u.person_id, u.channel FROM bench_tokens t JOIN bench_users u ON u.id = t.user_id "
              "WHERE t.token_hash = :h AND t.expires_at > :now")
_VOUCHER = text("INSERT INTO bench_vouchers (code_hash, user_id, person_id, created_at) "
                "VALUES (:h, :u, :p, :at) RETURNING id")


@app.get("/healthz")
def healthz():
    return jsonify(status="ok")


@app.post("/settle")
def settle():
    body = request.get_json()
    account_id, amount_fen = int(body["account_id"]), int(body["amount_fen"])
    now = datetime.now(UTC)
    with engine.begin() as conn:
        balance_fen = conn.execute(_LOCK, {"id": account_id}).scalar_one()
        if balance_fen < amount_fen:
            return jsonify(error="insufficient"), 422
        conn.execute(_DEBIT, {"x": amount_fen, "id": account_id})
        row_id = conn.execute(_ROW, {"id": account_id, "x": amount_fen, "at": now}).scalar_one()
        conn.execute(_OUTBOX, {"row": row_id, "payload": json.dumps({"amount_fen": amount_fen}), "at": now})
    return jsonify(id=row_id, balance_after_fen=balance_fen - amount_fen), 201


def _token_hash() -> str:
    return hashlib.sha256(request.headers.get("Authorization", "").removeprefix("Bearer ").encode()).hexdigest()


@app.post("/voucher")
def voucher():
    person_id = int(request.get_json()["person_id"])
    code = f"{secrets.randbelow(10**28):028d}"
    with engine.begin() as conn:
        user = conn.execute(_TOKEN, {"h": _token_hash(), "now": datetime.now(UTC)}).first()
        if user is None:
            return jsonify(error="unauthenticated"), 401
        conn.execute(_VOUCHER, {"h": hashlib.sha256(code.encode()).hexdigest(), "u": user.id, "p": person_id,
                                "at": datetime.now(UTC)})
    return jsonify(code=code, person_id=person_id), 201


@app.get("/me")
def me():
    with engine.connect() as conn:
        user = conn.execute(_TOKEN, {"h": _token_hash(), "now": datetime.now(UTC)}).first()
    if user is None:
        return jsonify(error="unauthenticated"), 401
    return jsonify(id=user.id, person_id=user.person_id, channel=user.channel)
