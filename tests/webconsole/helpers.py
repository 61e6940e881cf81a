"""Console test helpers: staff with console credentials, sign-in through the form, CSRF tokens."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp

from app.extensions import app_session
from app.services.console_auth import set_console_credentials
from app.services.staff_accounts import create_staff

PASSWORD = "correct horse battery staple"


def make_staff(app: Any, username: str, role: str) -> str:
    """A staff user with a console password; returns its TOTP secret."""
    now = datetime.now(UTC)
    with app_session() as session:
        create_staff(session, username, role, now)
        return set_console_credentials(session, app.extensions["domain"].pii, username, PASSWORD, now)


def code(secret: str, at: datetime | None = None) -> str:
    return pyotp.TOTP(secret).at(at or datetime.now(UTC))


def csrf(client: Any, path: str = "/console/login") -> str:
    page = client.get(path).get_data(as_text=True)
    found = re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', page)
    if found is None:
        found = re.search(r'id="csrf_token" name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert found, page[:500]
    return found.group(1)


def sign_in(client: Any, username: str, secret: str, *, password: str = PASSWORD, at: datetime | None = None,
            ip: str = "127.0.0.1") -> Any:
    token = csrf(client)
    return client.post("/console/login", data={"csrf_token": token, "username": username, "password": password,
                                               "code": code(secret, at)}, environ_base={"REMOTE_ADDR": ip})


def signed_in(client: Any, app: Any, username: str, role: str) -> str:
    secret = make_staff(app, username, role)
    response = sign_in(client, username, secret)
    assert response.status_code == 303, response.get_data(as_text=True)[:800]
    return secret


def post(client: Any, path: str, data: dict[str, Any] | None = None, *, page: str | None = None, **kwargs: Any) -> Any:
    """POST a console form with the session's CSRF token (read from ``page`` or the overview)."""
    token = csrf(client, page or "/console/")
    return client.post(path, data={"csrf_token": token, **(data or {})}, **kwargs)


def later(minutes: float) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)
