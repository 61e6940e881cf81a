"""The benchmark's reference: only the bare transactions the hot paths cannot do without, as a
minimal Flask app with SQLAlchemy Core under the same engine settings as the service.

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/copay_bench_x \\
        .venv/bin/gunicorn -w 4 -b 127.0.0.1:8101 bench.baseline_app:app

- ``POST /settle {"account_id": n, "amount_fen": x}``: lock the account, debit it, insert a ledger
  row and an outbox row, commit, answer JSON;
- ``POST /voucher {"person_id": n}`` (bearer token): look the token up, insert one voucher row, commit;
- ``GET /me`` (bearer token): look the token up joined to its user, answer JSON;
- ``POST /settle-rows {"code_hash": h, "amount_fen": x, "institution_id": i, "clearing_id": c}``: the
  settlement's floor — the service's own five statements (the voucher, the bindings, the cap row,
  the accounts locked, then every row in one write) with the values filled in without any rule: the
  bill is paid from the first bound owner's account. What a settlement costs in the database when
  the signature, the nonce, validation, the plan, the response and the notice hand-over are taken
  away: the gap between it and ``/settle`` is the cost of the records the rules keep (payment,
  journal and entries, cap and binding usage, notices and deliveries, the voucher's use).

No signature, no validation, no plan, no rules, no audit — what is left when everything the service
adds is taken away (``/settle-rows`` keeps the service's rows, nothing else). ``bench/run.py``
creates its tables (``bench_*``) and drives it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from datetime import UTC, datetime

from flask import Flask, jsonify, request
from sqlalchemy import text

from app import hot_sql
from app.config import normalize_database_url
from app.extensions import make_engine
from app.policy import SHANGHAI
from app.services import settlements as s  # /settle-rows runs the service's own statements (imported at boot)

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


@app.post("/settle-rows")
def settle_rows():
    body = request.get_json()
    amount_fen, now = int(body["amount_fen"]), datetime.now(UTC)
    on = now.astimezone(SHANGHAI).date()
    with engine.begin() as conn:
        run = hot_sql.execute  # as the service runs them (app/hot_sql.py)
        voucher = run(conn, s._VOUCHER_WITH_FACTS[1], {"code_hash": body["code_hash"], "service_time": now,
                                                       "now": now, "on": on}).one()
        binding = run(conn, s._BINDINGS_SHARED, {"beneficiary_id": voucher.person_id, "service_time": now,
                                                 "now": now}).first()
        used_fen = run(conn, s._CAP_LOCK["postgresql"], {"beneficiary_person_id": voucher.person_id,
                                                         "year": on.year, "used_fen": 0}).scalar_one()
        account = run(conn, s._LOCK_ACCOUNTS_WITH_USAGE, {"ids": [binding.account_id], "limited": [],
                                                          "year": on.year}).one()
        settlement_no = f"F{secrets.randbelow(10**12):012d}"
        after = account.balance_fen - amount_fen
        content = {"amount_fen": amount_fen, "settlement_no": settlement_no}
        row = run(conn, s._WRITE_ALL, {
            "settlement_no": settlement_no, "institution_id": body["institution_id"],
            "out_settlement_no": settlement_no, "request_hash": "0" * 64, "voucher_id": voucher.id,
            "beneficiary_person_id": voucher.person_id, "service_time": now, "auth_method": "voucher",
            "total_fen": amount_fen, "eligible_fen": amount_fen, "own_account_fen": 0, "copay_fen": amount_fen,
            "cash_fen": 0, "items": "[]", "reasons": "[]", "response": json.dumps(content), "now": now,
            "year": on.year, "created_year": on.year,
            "payments": json.dumps([{"sequence": 1, "kind": "copay", "account_id": binding.account_id,
                                     "owner_person_id": binding.owner_person_id, "binding_id": binding.id,
                                     "amount_fen": amount_fen, "balance_after_fen": after}]),
            "debit_accounts": [binding.account_id], "debit_amounts": [amount_fen],
            "clearing_id": body["clearing_id"], "paid_fen": amount_fen,
            "entries": json.dumps([{"account_id": binding.account_id, "amount_fen": -amount_fen},
                                   {"account_id": body["clearing_id"], "amount_fen": amount_fen}]),
            "binding_usage": json.dumps([{"binding_id": binding.id, "paid_fen": amount_fen}]),
            "notices": json.dumps([{"kind": "deduction", "person_id": binding.owner_person_id,
                                    "amount_fen": amount_fen, "balance_after_fen": after, "content": content,
                                    "channels": ["wechat"]}]),
            "give_up_at": now,
        }).one()
    return jsonify(settlement_no=settlement_no, cap_used_fen=used_fen + amount_fen,
                   deliveries=row.delivery_ids), 201
