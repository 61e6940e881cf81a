"""Helpers shared by API tests: sign in through the emulator, verify identity, auth headers."""

from __future__ import annotations

import secrets
from typing import Any


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


def signed_in_person(client: Any, sandbox: Any, name: str, id_number: str, openid: str | None = None) -> str:
    """Sign in from WeChat and verify identity as a registry person; return the access token."""
    token = sign_in_wechat(client, sandbox, openid)["access_token"]
    response = client.post("/api/v1/me/identity", json={"name": name, "id_number": id_number},
                           headers=bearer(token))
    assert response.status_code == 200, response.get_json()
    return token
