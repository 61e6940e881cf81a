"""Personal data appears nowhere it should not (R17): a full scenario against the app under gunicorn,
then every response body, every line of the app's log and of gunicorn's access log, every audit
row, and a ``pg_dump`` of the whole database are scanned for any registry person's raw ID number,
social-security card number, phone number or full name. Expected: 0 found.

Voucher codes stay out of URLs and so out of access logs (the QR endpoints take them in the body).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.engine import make_url

from app.demo import CHILD, DEMO_PHONES, NEIGHBOUR, OWNER, PARENT, SPOUSE, demo_registry
from app.extensions import app_session
from models import AuditEvent
from tests.binding_helpers import JPEG, PEOPLE, PNG
from tests.conftest import TEMPLATE_DEDUCTION, TEST_KEYS, WECHAT_APPID, WECHAT_SECRET
from tests.faults.servers import free_port
from tests.helpers import random_openid
from tests.money_helpers import HOSPITAL, SECRETS, drug, fresh, sign_headers

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("TEST_DATABASE_URL"), reason="the scan includes a pg_dump of PostgreSQL"),
]

ROOT = Path(__file__).resolve().parents[2]


def secrets_of_the_registry() -> dict[str, str]:
    """Every registry person's raw ID number, card number, phone and full name → what it is."""
    found: dict[str, str] = {}
    for person in demo_registry()["persons"]:
        found[person["id_number"]] = "id_number"
        found[person["social_card_no"]] = "social_card_no"
        found[person["name"]] = "name"
        if person.get("phone"):
            found[person["phone"]] = "phone"
    return found


class Api:
    """A requests session that keeps every response body it saw."""

    def __init__(self, base: str):
        self.base = base
        self.http = requests.Session()
        self.bodies: list[tuple[str, bytes]] = []

    def call(self, method: str, path: str, token: str | None = None, expect: int | None = None,
             **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = self.http.request(method, self.base + path, headers=headers, timeout=30, **kwargs)
        self.bodies.append((f"{method} {path} {response.status_code}", response.content))
        if expect is not None:
            assert response.status_code == expect, (path, response.status_code, response.text[:300])
        return response

    def signed(self, method: str, path: str, body: dict[str, Any] | None, expect: int | None = None):
        raw = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
        headers = sign_headers(HOSPITAL, SECRETS[HOSPITAL], method, path, raw)
        if raw:
            headers["Content-Type"] = "application/json"
        return self.call(method, path, data=raw, headers=headers, expect=expect)


@pytest.fixture
def served(app, demo, sandbox, tmp_path):
    """The app under gunicorn on a free port, over the test database, logging to files."""
    port = free_port()
    access_log, app_log = tmp_path / "access.log", tmp_path / "app.log"
    env = {
        "PATH": os.environ.get("PATH", ""), **TEST_KEYS,
        "DATABASE_URL": app.config["DATABASE_URL"], "REDIS_URL": app.config.get("REDIS_URL") or "",
        "DOCUMENT_DIR": app.config["DOCUMENT_DIR"], "WECHAT_APPID": WECHAT_APPID, "WECHAT_SECRET": WECHAT_SECRET,
        "WECHAT_API_BASE_URL": app.config["WECHAT_API_BASE_URL"], "WECHAT_TEMPLATE_DEDUCTION": TEMPLATE_DEDUCTION,
        "WECHAT_MSG_TOKEN": "test-msg-token", "LOG_LEVEL": "DEBUG",
    }
    if not env["REDIS_URL"]:
        del env["REDIS_URL"]
    with app_log.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4",
             "--access-logfile", str(access_log), "--access-logformat",
             '%(h)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(L)s', "--no-control-socket", "wsgi:app"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert server.poll() is None and time.monotonic() < deadline, app_log.read_text()[-3000:]
            time.sleep(0.2)
        yield Api(f"http://127.0.0.1:{port}"), access_log, app_log
    finally:
        server.terminate()
        server.wait(timeout=30)


def _scenario(api: Api, sandbox: Any, staff: dict[str, str]) -> None:
    """Sign-in, identity, proofs, bindings (online and at the window), pledges, vouchers and their QR,
    settlements, replay, refunds, records, quota, notices, staff look-ups, suspensions, the audit log,
    and the failures a careless or hostile client causes."""
    def sign_in(who: str) -> str:
        openid = random_openid()
        code = sandbox.issue_wechat_login_code(openid)
        token = api.call("POST", "/api/v1/auth/wechat", json={"code": code}, expect=200).json()["access_token"]
        # R21: identity by WeChat's real-name check, then the reserved phone proven through WeChat
        sandbox.set_wechat_identity(openid, PEOPLE[who][0], who)
        proof = {"wechat_realname_code": sandbox.issue_wechat_realname_code(openid)}
        api.call("POST", "/api/v1/me/identity", token, json={"name": PEOPLE[who][0], "id_number": who,
                                                              "proof": proof}, expect=200)
        if DEMO_PHONES.get(who):
            sandbox.set_wechat_phone(openid, DEMO_PHONES[who])
            api.call("POST", "/api/v1/me/phone", token, json={"wechat_code": sandbox.issue_wechat_phone_code(openid)},
                     expect=200)
        return token

    owner, spouse = sign_in(OWNER), sign_in(SPOUSE)
    api.call("GET", "/api/v1/me", owner, expect=200)
    # wrong name, unknown number, malformed number: the answers must not echo them
    stranger = api.call("POST", "/api/v1/auth/wechat", json={"code": sandbox.issue_wechat_login_code(random_openid())})
    other = stranger.json()["access_token"]
    api.call("POST", "/api/v1/me/identity", other, json={"name": "李四", "id_number": OWNER}, expect=422)
    api.call("POST", "/api/v1/me/identity", other, json={"name": PEOPLE[OWNER][0], "id_number": OWNER[:-1] + "0"})
    api.call("POST", "/api/v1/me/identity", other, json={"name": PEOPLE[OWNER][0], "id_number": "1" * 18})
    api.call("POST", "/api/v1/subscriptions", owner, expect=200, json={
        "channel": "wechat", "mode": "long_term", "results": {TEMPLATE_DEDUCTION: "accept"}})
    pledge = api.call("GET", "/api/v1/pledges/current", expect=200).json()
    agreed = {"version": pledge["version"], "sha256": pledge["sha256"], "agreed": True}
    document = api.call("POST", "/api/v1/documents", owner, files={"file": ("户口本.png", PNG, "image/png")}).json()
    api.call("GET", f"/api/v1/documents/{document['id']}", owner, expect=200)

    def member(who: str, **changes: str) -> dict[str, str]:
        return {"name": PEOPLE[who][0], "id_number": who, "social_card_no": PEOPLE[who][1]} | changes

    child = api.call("POST", "/api/v1/bindings", owner, expect=201, json={
        "beneficiary": member(CHILD), "relationship": "child", "proof_document_ids": [], "pledge": agreed}).json()
    api.call("POST", "/api/v1/bindings", owner, json={  # a mismatching card number
        "beneficiary": member(PARENT, social_card_no="M00000000000000"), "relationship": "parent",
        "proof_document_ids": [], "pledge": agreed})
    pending = api.call("POST", "/api/v1/bindings", owner, json={
        "beneficiary": member(NEIGHBOUR), "relationship": "parent", "proof_document_ids": [document["id"]],
        "pledge": agreed}).json()
    api.call("POST", "/api/v1/bindings", spouse, expect=201, json={
        "beneficiary": member(CHILD), "relationship": "child", "proof_document_ids": [], "pledge": agreed})
    for token in (owner, spouse):
        api.call("GET", "/api/v1/bindings", token, expect=200)
        api.call("GET", "/api/v1/records/authorizations", token, expect=200)
    api.call("GET", f"/api/v1/bindings/{child['id']}", owner, expect=200)
    api.call("GET", f"/api/v1/bindings/{child['id']}/pledge", owner, expect=200)
    api.call("PATCH", f"/api/v1/bindings/{child['id']}", owner, json={"yearly_limit_fen": 150000}, expect=200)
    # window side
    window, admin, auditor = staff["window1"], staff["admin1"], staff["auditor1"]
    scanned = api.call("POST", "/api/v1/documents", window, files={"file": ("scan.jpg", JPEG, "image/jpeg")}).json()
    api.call("POST", "/api/v1/staff/bindings", window, expect=201, json={
        "owner": {"id_number": OWNER}, "beneficiary": member(PARENT), "relationship": "parent",
        "proof_document_ids": [scanned["id"]], "pledge": agreed})
    if "id" in pending:
        api.call("POST", f"/api/v1/staff/bindings/{pending['id']}/reject", window, json={"reason": "材料不全"})
    api.call("POST", "/api/v1/staff/bindings/search", window, expect=200, json={"owner_id_number": OWNER})
    api.call("GET", "/api/v1/staff/bindings", auditor, expect=200)
    suspension = api.call("POST", "/api/v1/staff/suspensions", admin, expect=201, json={
        "beneficiary_id_number": PARENT, "reason": "疑似倒卖药品"}).json()
    api.call("POST", f"/api/v1/staff/suspensions/{suspension['id']}/lift", admin, json={"reason": "核实无误"})
    api.call("GET", "/api/v1/records/authorizations", owner, expect=200)  # the suspension: a standard text
    api.call("GET", f"/api/v1/staff/bindings/{child['id']}/pledge", auditor, expect=200)  # audit-logged (pledge.read)
    api.call("POST", "/api/v1/staff/offsite-filings", window, json={
        "id_number": CHILD, "region_prefix": "3703", "valid_from": "2026-01-01", "valid_to": "2027-12-31"})
    # vouchers, settlement, replay, refund
    for _ in range(2):
        voucher = api.call("POST", "/api/v1/vouchers", owner, json={"person_id": child["beneficiary"]["person_id"]},
                           expect=201).json()
        api.call("POST", "/api/v1/vouchers/qr.png", owner, json={"code": voucher["code"]}, expect=200)
        api.call("POST", "/api/v1/vouchers/qr.svg", owner, json={"code": voucher["code"]}, expect=200)
        body = {"out_settlement_no": "HIS" + voucher["code"][-8:], "voucher_code": voucher["code"],
                "items": [drug(23_456), {"code": "C1", "name": "美容", "category": "cosmetic",
                                         "in_catalogue": False, "amount_fen": 1000}]}
        settled = api.signed("POST", "/api/v1/institution/settlements", body, expect=201).json()
        api.signed("POST", "/api/v1/institution/settlements", body, expect=201)  # replay
        api.signed("GET", f"/api/v1/institution/settlements/{settled['settlement_no']}", None, expect=200)
        api.signed("POST", f"/api/v1/institution/settlements/{settled['settlement_no']}/refunds",
                   {"out_refund_no": "RF" + voucher["code"][-8:], "amount_fen": 5000}, expect=201)
    api.signed("POST", "/api/v1/institution/settlements", {  # a used voucher, and a card that does not match
        "out_settlement_no": "HIS-again", "voucher_code": voucher["code"], "items": [drug(100)]})
    for token in (owner, spouse):
        for role in ("owner", "beneficiary"):
            api.call("GET", f"/api/v1/records/deductions?role={role}", token, expect=200)
        api.call("GET", "/api/v1/quota", token, expect=200)
        api.call("GET", "/api/v1/notifications", token, expect=200)
    api.call("GET", "/api/v1/staff/notices", window, expect=200)
    api.call("GET", "/api/v1/staff/audit-log?limit=100", auditor, expect=200)
    api.call("GET", "/api/v1/staff/suspensions", admin, expect=200)


def _hits(text: str, secrets_: dict[str, str]) -> list[str]:
    return [f"{kind} {value[:3]}…" for value, kind in secrets_.items() if value in text]


def test_no_raw_personal_data_in_responses_logs_audit_rows_or_the_database(app, sandbox, demo, served):
    api, access_log, app_log = served
    fresh(app)
    _scenario(api, sandbox, demo.tokens)
    time.sleep(0.5)  # the last access-log lines are written
    secret = secrets_of_the_registry()
    assert _hits(f'{{"x": "{OWNER}"}} 张伟', secret) == ["id_number 532…", "name 张伟…"]  # the scanner can see

    found: dict[str, list[str]] = {}
    for label, body in api.bodies:
        hits = _hits(body.decode("utf-8", "replace"), secret)
        if hits:
            found[f"response {label}"] = hits
    access, logged = access_log.read_text("utf-8"), app_log.read_text("utf-8")
    for name, text_ in (("gunicorn access log", access), ("app log", logged)):
        for number, line in enumerate(text_.splitlines(), 1):
            if hits := _hits(line, secret):
                found[f"{name} line {number}"] = hits
    with app_session() as session, session.begin():
        audit_rows = [json.dumps({"action": a.action, "details": a.details, "ip": a.ip, "target": a.target_kind},
                                 ensure_ascii=False) for a in session.scalars(select(AuditEvent))]
    for number, row in enumerate(audit_rows, 1):
        if hits := _hits(row, secret):
            found[f"audit row {number}"] = hits
    url = make_url(app.config["DATABASE_URL"])
    dump = subprocess.run(["pg_dump", "--no-owner", "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432),
                           "-U", url.username or "postgres", url.database], capture_output=True, check=True,
                          timeout=120).stdout.decode("utf-8")
    for number, line in enumerate(dump.splitlines(), 1):
        if hits := _hits(line, secret):
            found[f"pg_dump line {number}"] = hits

    # the scan looked at real material: everything above ran and left traces where expected
    assert len(api.bodies) >= 50 and access.count("\n") >= 50 and len(audit_rows) >= 15
    assert "COPY public.persons" in dump and "COPY public.settlements" in dump
    assert "POST /api/v1/vouchers/qr.png" in access
    codes = [b.decode() for label, b in api.bodies if label.startswith("POST /api/v1/vouchers 201")]
    assert codes and not any(json.loads(c)["code"] in access + logged for c in codes)  # voucher codes: not logged
    assert found == {}, json.dumps(found, ensure_ascii=False, indent=1)[:3000]
    print(f"\npersonal-data scan: {len(api.bodies)} responses, {access.count(chr(10))} access-log lines, "
          f"{logged.count(chr(10))} app-log lines, {len(audit_rows)} audit rows, {dump.count(chr(10))} pg_dump "
          f"lines; {len(secret)} values searched; 0 found")
