"""The benchmark's baseline: only the bare transaction a settlement cannot do without, as a minimal
Flask app under the same engine settings as the service.

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/copay_bench_x \\
        .venv/bin/gunicorn -w 4 -b 127.0.0.1:8101 bench.baseline_app:app

``POST /settle {"account_id": n, "amount_fen": x}``: lock the account, debit it, insert a row,
commit, answer JSON. No authentication, no validation, no plan, no ledger, no notices — what is
left when everything the service adds is taken away. ``bench/settlement.py`` creates its tables
(``bench_accounts``, ``bench_rows``) and drives it.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from flask import Flask, jsonify, request
from sqlalchemy import text

from app.config import normalize_database_url
from app.extensions import make_engine

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS bench_accounts (id BIGINT PRIMARY KEY, balance_fen BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bench_rows (id BIGSERIAL PRIMARY KEY, account_id BIGINT NOT NULL, "
    "amount_fen BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL)",
)

app = Flask(__name__)
engine = make_engine(normalize_database_url(os.environ.get("BENCH_DATABASE_URL", "")))


@app.get("/healthz")
def healthz():
    return jsonify(status="ok")


@app.post("/settle")
def settle():
    body = request.get_json()
    account_id, amount_fen = int(body["account_id"]), int(body["amount_fen"])
    with engine.begin() as conn:
        balance_fen = conn.execute(text("SELECT balance_fen FROM bench_accounts WHERE id = :id FOR UPDATE"),
                                   {"id": account_id}).scalar_one()
        if balance_fen < amount_fen:
            return jsonify(error="insufficient"), 422
        conn.execute(text("UPDATE bench_accounts SET balance_fen = balance_fen - :x WHERE id = :id"),
                     {"x": amount_fen, "id": account_id})
        row_id = conn.execute(
            text("INSERT INTO bench_rows (account_id, amount_fen, created_at) VALUES (:id, :x, :at) RETURNING id"),
            {"id": account_id, "x": amount_fen, "at": datetime.now(UTC)},
        ).scalar_one()
    return jsonify(id=row_id, balance_after_fen=balance_fen - amount_fen), 201
