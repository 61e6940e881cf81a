"""Helpers for the money tests: the demo family, bindings made directly, signed institution requests."""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from app.demo import CHILD, DEMO_INSTITUTION_SECRET, NEIGHBOUR, OWNER, PARENT, SPOUSE, demo_registry
from app.extensions import app_session
from app.security.request_signing import sign
from models import Account, Binding, Person
from tests.helpers import bearer, signed_in_person

NAMES = {p["id_number"]: p["name"] for p in demo_registry()["persons"]}
SECRETS = {i["code"]: i["api_secret"] for i in demo_registry()["institutions"]}
HOSPITAL = "H5326001"  # 文山州人民医院, region 532601: same prefecture as the family (5326)
PHARMACY = "P5326002"
ZIBO_HOSPITAL = "H3703001"  # another province: off-site for the family (R10)
NOT_DESIGNATED = "C5326009"
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)

__all__ = ["CHILD", "DEMO_INSTITUTION_SECRET", "NEIGHBOUR", "OWNER", "PARENT", "SPOUSE"]


def fresh(app: Any) -> None:
    """Forget cached institution secrets: each test reloads the registry under new row ids."""
    app.extensions["domain"].institutions.clear()


def person_id(app: Any, id_number: str) -> int:
    pii = app.extensions["domain"].pii
    with app_session() as session, session.begin():
        return session.scalar(select(Person.id).where(
            Person.id_number_bidx == pii.blind_index(id_number, kind="id_number")))


def balance(app: Any, id_number: str) -> int | None:
    with app_session() as session, session.begin():
        return session.scalar(select(Account.balance_fen).where(Account.person_id == person_id(app, id_number)))


def set_balance(app: Any, id_number: str, balance_fen: int) -> None:
    """Set a balance through a registry load (a registry journal keeps the ledger true)."""
    from app.services.registry import load_registry

    data = {"as_of": datetime.now(UTC).isoformat(), "persons": [],
            "accounts": [{"id_number": id_number, "balance_fen": balance_fen}], "households": [], "institutions": []}
    with app_session() as session:
        load_registry(session, app.extensions["domain"].pii, data, datetime.now(UTC))


def make_binding(app: Any, owner: str, beneficiary: str, relationship: str, *, status: str = "active",
                 effective_at: datetime | None = LONG_AGO, ended_at: datetime | None = None,
                 yearly_limit_fen: int | None = None) -> int:
    """A binding written directly (the bindings service is tested elsewhere)."""
    with app_session() as session, session.begin():
        binding = Binding(owner_person_id=person_id(app, owner), beneficiary_person_id=person_id(app, beneficiary),
                          relationship=relationship, channel="window", status=status,
                          effective_at=effective_at if status != "pending_review" else None, ended_at=ended_at,
                          yearly_limit_fen=yearly_limit_fen, relationship_confirmed=True,
                          created_at=effective_at or datetime.now(UTC))
        session.add(binding)
        session.flush()
        return binding.id


def sign_in(client: Any, sandbox: Any, id_number: str) -> str:
    return signed_in_person(client, sandbox, NAMES[id_number], id_number)


def issue(client: Any, token: str, person: int | None = None) -> str:
    """A new voucher code for the signed-in user (for ``person``: a 亲情码)."""
    response = client.post("/api/v1/vouchers", json={} if person is None else {"person_id": person},
                           headers=bearer(token))
    assert response.status_code == 201, response.get_json()
    return response.get_json()["code"]


def suspending_family(app: Any, demo: Any, client: Any, sandbox: Any) -> type:
    """For the suspension holes (R11): 张伟 (350000 fen) and 李娜 (120000 fen) signed in; 李娜 is bound
    to their child (``spouse_binding``); the demo staff ``tokens``; the three persons' ids."""
    fresh(app)

    class Family:
        owner_token = sign_in(client, sandbox, OWNER)
        spouse_token = sign_in(client, sandbox, SPOUSE)
        spouse_binding = make_binding(app, SPOUSE, CHILD, "child")
        child = person_id(app, CHILD)
        owner = person_id(app, OWNER)
        spouse = person_id(app, SPOUSE)
        tokens = demo.tokens

    return Family


def ok(response: Any, status: int = 200) -> Any:
    """The answer's body, once its status is ``status``."""
    assert response.status_code == status, response.get_json()
    return response.get_json()


def suspend_by_admin(client: Any, family: Any, reason: str, **body: Any) -> Any:
    """An admin's R11 suspension (``owner_id_number=…``, ``binding_id=…``, …) of ``suspending_family``."""
    return ok(client.post("/api/v1/staff/suspensions", json={"reason": reason, **body},
                          headers=bearer(family.tokens["admin1"])), 201)


def sign_headers(inst_code: str, secret: str, method: str, path: str, body: bytes, *,
                 timestamp: int | None = None, nonce: str | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    return {"X-Inst-Code": inst_code, "X-Timestamp": ts, "X-Nonce": nonce,
            "X-Signature": sign(secret, method, path, ts, nonce, body)}


def signed(client: Any, inst_code: str, secret: str | None, method: str, path: str, json_body: Any = None,
           **header_options: Any) -> Any:
    """Send a request signed as an institution would sign it (body: the exact bytes sent)."""
    body = b"" if json_body is None else json.dumps(json_body, ensure_ascii=False).encode()
    headers = sign_headers(inst_code, secret or SECRETS[inst_code], method, path, body, **header_options)
    return client.open(path, method=method, data=body, headers=headers,
                       content_type="application/json" if body else None)


def drug(amount_fen: int, *, in_catalogue: bool = True, code: str = "D001") -> dict[str, Any]:
    return {"code": code, "name": "阿莫西林胶囊", "category": "drug", "in_catalogue": in_catalogue,
            "amount_fen": amount_fen}


def item(category: str, amount_fen: int, *, code: str = "X001") -> dict[str, Any]:
    return {"code": code, "name": "项目", "category": category, "in_catalogue": False, "amount_fen": amount_fen}


def settle(client: Any, voucher_code: str, items: list[dict[str, Any]] | None = None, *, inst: str = HOSPITAL,
           out_no: str | None = None, **fields: Any) -> Any:
    body = {"out_settlement_no": out_no or "OUT" + secrets.token_hex(6), "voucher_code": voucher_code,
            "items": items or [drug(10_000)], **fields}
    return signed(client, inst, None, "POST", "/api/v1/institution/settlements", body)


def settle_by_card(client: Any, social_card_no: str, id_number: str, items: list[dict[str, Any]] | None = None, *,
                   inst: str = HOSPITAL, **fields: Any) -> Any:
    """A settlement with the patient's social-security card read at the counter (R12) instead of a code."""
    body = {"out_settlement_no": "OUT" + secrets.token_hex(6), "card": {"social_card_no": social_card_no,
            "id_number": id_number}, "items": items or [drug(10_000)], **fields}
    return signed(client, inst, None, "POST", "/api/v1/institution/settlements", body)


def refund(client: Any, settlement_no: str, amount_fen: int, *, inst: str = HOSPITAL,
           out_no: str | None = None) -> Any:
    body = {"out_refund_no": out_no or "RF" + secrets.token_hex(6), "amount_fen": amount_fen}
    return signed(client, inst, None, "POST", f"/api/v1/institution/settlements/{settlement_no}/refunds", body)


def assert_ledger_clean(app: Any) -> None:
    """What ``flask verify-ledger`` checks holds: every money test leaves a consistent ledger."""
    from app.services.ledger_check import verify_ledger as check

    with app.app_context(), app_session() as session:
        report = check(session)
    assert report.clean, report.differences


def verify_ledger(app: Any) -> Any:
    """Run ``flask verify-ledger``; the result has ``exit_code`` and ``output`` (stdout and stderr)."""
    return app.test_cli_runner().invoke(args=["verify-ledger"])
