"""Helpers shared by API tests: sign in through the emulator, prove identity and phone, auth headers.

Verified users are made only through a real proof path (R21): the emulator gives the WeChat user
a real-name identity, WeChat's real-name check confirms it, and — where the demo registry holds a
reserved number — the phone button proves that number too (Wenshan's ``phone_check``).
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.config import normalize_database_url
from app.demo import DEMO_PHONES


def random_openid() -> str:
    return "o" + secrets.token_hex(13)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sign_in_wechat(client: Any, sandbox: Any, openid: str | None = None) -> dict[str, Any]:
    code = sandbox.issue_wechat_login_code(openid or random_openid())
    response = client.post("/api/v1/auth/wechat", json={"code": code})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def sign_in_alipay(client: Any, sandbox: Any, user_id: str | None = None) -> dict[str, Any]:
    code = sandbox.issue_alipay_auth_code(user_id=user_id or "2088" + str(secrets.randbelow(10**12)).zfill(12))
    response = client.post("/api/v1/auth/alipay", json={"auth_code": code})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def realname_identity_body(sandbox: Any, openid: str, name: str, id_number: str) -> dict[str, Any]:
    """A ``POST /me/identity`` body proven by WeChat's real-name check: the emulator knows the user
    with this openid as (name, id_number) and has issued the code."""
    sandbox.set_wechat_identity(openid, name, id_number)
    return {"name": name, "id_number": id_number,
            "proof": {"wechat_realname_code": sandbox.issue_wechat_realname_code(openid)}}


def prove_identity_wechat(client: Any, sandbox: Any, token: str, openid: str, name: str, id_number: str) -> Any:
    """WeChat's real-name check for this user as (name, id_number): the emulator knows the user as them."""
    return client.post("/api/v1/me/identity", json=realname_identity_body(sandbox, openid, name, id_number),
                       headers=bearer(token))


def prove_phone_wechat(client: Any, sandbox: Any, token: str, openid: str, phone: str) -> Any:
    sandbox.set_wechat_phone(openid, phone)
    return client.post("/api/v1/me/phone", json={"wechat_code": sandbox.issue_wechat_phone_code(openid)},
                       headers=bearer(token))


def signed_in_person(client: Any, sandbox: Any, name: str, id_number: str, openid: str | None = None,
                     phone: str | None = None) -> str:
    """Sign in from WeChat, prove identity as a registry person (real-name check) and, when the
    demo registry has a reserved number for them (or ``phone`` is given), prove that phone too."""
    openid = openid or random_openid()
    token = sign_in_wechat(client, sandbox, openid)["access_token"]
    response = prove_identity_wechat(client, sandbox, token, openid, name, id_number)
    assert response.status_code == 200, response.get_json()
    phone = phone or DEMO_PHONES.get(id_number)
    if phone:
        response = prove_phone_wechat(client, sandbox, token, openid, phone)
        assert response.status_code == 200, response.get_json()
    return token


def verify_identity(client: Any, token: str, name: str, id_number: str, proof: dict[str, Any] | None = None) -> Any:
    """``POST /me/identity`` as (name, id_number) with ``proof`` (none: the body has no proof)."""
    body = {"name": name, "id_number": id_number} | ({"proof": proof} if proof is not None else {})
    return client.post("/api/v1/me/identity", json=body, headers=bearer(token))


def me(client: Any, token: str) -> dict[str, Any]:
    """``GET /me``'s body."""
    return client.get("/api/v1/me", headers=bearer(token)).get_json()


def reserve_phone(client: Any, demo: Any, id_number: str, phone: str) -> dict[str, Any]:
    """Window staff set a person's reserved number (after checking the ID card)."""
    response = client.post("/api/v1/staff/persons/phone", json={"id_number": id_number, "phone": phone},
                           headers=bearer(demo.tokens["window1"]))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@contextmanager
def scratch_database(prefix: str = "copay_ops") -> Iterator[str]:
    """A new empty database on the TEST_DATABASE_URL server, dropped afterwards."""
    server = normalize_database_url(os.environ["TEST_DATABASE_URL"])
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def waiting_for_lock(query_like: str) -> bool:
    """PostgreSQL: whether another connection waits for a row lock in a statement like ``query_like``."""
    from app.extensions import app_session

    with app_session() as watch, watch.begin():
        return bool(watch.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                      "AND query LIKE :q"), {"q": query_like}))
