"""Console sign-in: password + TOTP, sessions, timeouts, lock-out, CSRF, headers, audit (issue 12)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from app import errors
from app.extensions import app_session
from app.services.console_auth import backoff_seconds, check_password_rules
from models import AuditEvent, ConsoleLockout, ConsoleSession, StaffUser
from tests.webconsole.helpers import PASSWORD, code, csrf, make_staff, post, sign_in, signed_in


def _actions(app) -> list[str]:
    with app_session() as session, session.begin():
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def test_signing_in_with_password_and_totp_opens_the_overview(app, client):
    secret = make_staff(app, "clerk", "window")
    response = sign_in(client, "clerk", secret)
    assert response.status_code == 303 and response.headers["Location"].endswith("/console/")
    page = client.get("/console/")
    assert page.status_code == 200
    assert "概览" in page.get_data(as_text=True)
    assert "console.sign_in" in _actions(app)


def test_the_session_cookie_is_httponly_and_samesite_strict(app, client):
    secret = make_staff(app, "clerk", "window")
    cookie = sign_in(client, "clerk", secret).headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie


def test_the_cookie_is_secure_under_app_env_production():
    from flask import Flask

    from console.web import configure

    prod = Flask(__name__)
    prod.config["APP_ENV"] = "production"
    configure(prod)
    assert prod.config["SESSION_COOKIE_SECURE"] is True
    assert prod.config["SESSION_COOKIE_NAME"].startswith("__Host-")
    assert prod.config["SESSION_COOKIE_SAMESITE"] == "Strict" and prod.config["SESSION_COOKIE_HTTPONLY"]


@pytest.mark.parametrize("field", ["password", "code", "username"])
def test_any_wrong_factor_is_refused_with_the_same_message(app, client, field):
    secret = make_staff(app, "clerk", "window")
    data = {"username": "clerk", "password": PASSWORD, "code": code(secret)}
    data[field] = {"password": "wrong password!!", "code": "000000", "username": "nobody"}[field]
    if data["code"] == code(secret) and field == "code":
        data["code"] = "111111"
    response = client.post("/console/login", data={"csrf_token": csrf(client), **data})
    assert response.status_code == 401
    assert "用户名、密码或动态验证码错误" in response.get_data(as_text=True)
    assert client.get("/console/").status_code == 302
    assert "console.sign_in_failed" in _actions(app)


def test_a_totp_code_is_accepted_once(app, client):
    secret = make_staff(app, "clerk", "window")
    now = datetime.now(UTC)
    assert sign_in(client, "clerk", secret, at=now).status_code == 303
    other = app.test_client()
    assert sign_in(other, "clerk", secret, at=now).status_code == 401


def test_five_failures_lock_the_account_with_back_off_even_for_the_right_password(app, client):
    secret = make_staff(app, "clerk", "window")
    for attempt in range(5):
        response = sign_in(client, "clerk", secret, password=f"wrong-{attempt}-password", ip=f"10.0.0.{attempt}")
        assert response.status_code == 401
    locked = sign_in(client, "clerk", secret, ip="10.0.0.99")
    assert locked.status_code == 401
    assert "锁定" in locked.get_data(as_text=True)
    actions = _actions(app)
    assert "console.lockout" in actions and "console.sign_in_locked" in actions
    assert "console.sign_in" not in actions


def test_five_failures_from_one_address_lock_that_address_for_every_account(app, client):
    secret = make_staff(app, "clerk", "window")
    for attempt in range(5):
        sign_in(client, f"guess{attempt}", secret, ip="10.9.9.9")
    assert "锁定" in sign_in(client, "clerk", secret, ip="10.9.9.9").get_data(as_text=True)
    assert sign_in(client, "clerk", secret, ip="10.9.9.10").status_code == 303


def test_back_off_doubles_from_the_fifth_failure_up_to_an_hour():
    assert [backoff_seconds(n) for n in range(1, 10)] == [0, 0, 0, 0, 60, 120, 240, 480, 960]
    assert backoff_seconds(30) == 3600


def test_passwords_are_stored_as_argon2id_and_must_be_long(app):
    make_staff(app, "clerk", "window")
    with app_session() as session, session.begin():
        stored = session.scalar(select(StaffUser.password_hash).where(StaffUser.username == "clerk"))
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    with pytest.raises(errors.ValidationFailed):
        check_password_rules("short", "clerk")
    with pytest.raises(errors.ValidationFailed):
        check_password_rules("clerk-clerk-clerk", "Clerk-Clerk-Clerk")


def _age_session(minutes: float) -> None:
    with app_session() as session, session.begin():
        session.execute(update(ConsoleSession).values(
            last_seen_at=datetime.now(UTC) - timedelta(minutes=minutes)))


def test_fifteen_idle_minutes_end_the_session(app, client):
    signed_in(client, app, "clerk", "window")
    _age_session(14)
    assert client.get("/console/").status_code == 200
    _age_session(15.5)
    response = client.get("/console/")
    assert response.status_code == 302 and "expired=1" in response.headers["Location"]
    assert "console.session_expired" in _actions(app)
    _age_session(0)  # the ended session stays ended
    assert client.get("/console/").status_code == 302


def test_eight_hours_end_the_session_however_active(app, client):
    signed_in(client, app, "clerk", "window")
    with app_session() as session, session.begin():
        session.execute(update(ConsoleSession).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert client.get("/console/").status_code == 302


def test_logout_ends_the_session_and_a_copied_cookie_is_refused_afterwards(app, client):
    signed_in(client, app, "clerk", "window")
    cookie = client.get_cookie("copay_console").value
    response = post(client, "/console/logout")
    assert response.status_code == 303
    replay = app.test_client()
    replay.set_cookie("copay_console", cookie)
    assert replay.get("/console/").status_code == 302
    assert "console.sign_out" in _actions(app)


def test_a_post_without_the_csrf_token_is_refused(app, client):
    signed_in(client, app, "clerk", "window")
    response = client.post("/console/logout")
    assert response.status_code == 400
    assert "页面已过期或来源不可信" in response.get_data(as_text=True)
    assert client.get("/console/").status_code == 200  # still signed in
    forged = client.post("/console/filings", data={"csrf_token": "forged", "id_number": "x"})
    assert forged.status_code == 400


def test_the_sign_in_form_needs_a_csrf_token_too(app, client):
    secret = make_staff(app, "clerk", "window")
    response = client.post("/console/login", data={"username": "clerk", "password": PASSWORD, "code": code(secret)})
    assert response.status_code == 400


def test_console_pages_carry_the_security_headers(app, client):
    signed_in(client, app, "clerk", "window")
    for path in ("/console/login", "/console/", "/console/persons"):
        headers = client.get(path).headers
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "same-origin"
        assert headers["Cache-Control"] == "no-store"


def test_pages_hold_no_inline_script(app, client):
    signed_in(client, app, "clerk", "admin")
    for path in ("/console/login", "/console/", "/console/reviews", "/console/persons", "/console/suspensions",
                 "/console/window-binding", "/console/deliveries", "/console/audit", "/console/account"):
        page = client.get(path).get_data(as_text=True)
        assert "<script>" not in page and "onclick" not in page.lower(), path


def test_changing_the_password_ends_the_other_sessions(app, client):
    secret = signed_in(client, app, "clerk", "window")
    other = app.test_client()
    assert sign_in(other, "clerk", secret, at=datetime.now(UTC) + timedelta(seconds=30)).status_code == 303
    response = post(client, "/console/account", {"current_password": PASSWORD,
                                                 "new_password": "a much longer new password"},
                    page="/console/account")
    assert "密码已修改" in response.get_data(as_text=True)
    assert client.get("/console/").status_code == 200
    assert other.get("/console/").status_code == 302
    assert "console.password_change" in _actions(app)


def test_a_wrong_current_password_changes_nothing(app, client):
    signed_in(client, app, "clerk", "window")
    response = post(client, "/console/account", {"current_password": "not my password",
                                                 "new_password": "a much longer new password"},
                    page="/console/account")
    assert "当前密码错误" in response.get_data(as_text=True)
    assert "console.password_change_failed" in _actions(app)
    short = post(client, "/console/account", {"current_password": PASSWORD, "new_password": "short"},
                 page="/console/account")
    assert "至少 12 位" in short.get_data(as_text=True)


def test_totp_enrolment_shows_the_otpauth_qr_inline(app, client):
    signed_in(client, app, "clerk", "window")
    page = client.get("/console/account/totp").get_data(as_text=True)
    assert "<svg" in page and "绑定身份验证器" in page


def test_an_unknown_console_address_is_a_chinese_page(app, client):
    signed_in(client, app, "clerk", "window")
    response = client.get("/console/no-such-page")
    assert response.status_code == 404
    assert "未找到" in response.get_data(as_text=True)
    assert response.content_type.startswith("text/html")


def test_signed_out_visitors_are_sent_to_the_sign_in_page(client):
    response = client.get("/console/persons")
    assert response.status_code == 302 and "/console/login" in response.headers["Location"]


def test_an_unexpected_failure_is_a_chinese_page_without_a_stack_trace(app, client, monkeypatch):
    from app.services import overview

    signed_in(client, app, "clerk", "window")

    def broken(*_args, **_kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(overview, "overview", broken)
    response = client.get("/console/")
    html = response.get_data(as_text=True)
    assert response.status_code == 500 and "系统出现异常" in html
    assert "secret internals" not in html and "Traceback" not in html


def test_re_enrolling_totp_replaces_the_secret_after_password_and_code(app, client):
    import re

    old_secret = signed_in(client, app, "clerk", "window")
    page = client.get("/console/account/totp").get_data(as_text=True)
    new_secret = re.search(r'<span class="mono">([A-Z2-7]{32})</span>', page).group(1)
    cookie = app.session_interface.get_signing_serializer(app).loads(client.get_cookie("copay_console").value)
    assert new_secret not in str(cookie)  # the pending secret rides in the cookie encrypted only
    wrong = post(client, "/console/account/totp", {"password": "not my password", "code": code(new_secret)},
                 page="/console/account/totp")
    assert "密码或动态验证码错误" in wrong.get_data(as_text=True)
    done = post(client, "/console/account/totp", {"password": PASSWORD, "code": code(new_secret)},
                page="/console/account/totp")
    assert 'id="totp-enrolled"' in done.get_data(as_text=True)
    later = datetime.now(UTC) + timedelta(seconds=30)
    assert sign_in(app.test_client(), "clerk", old_secret, at=later).status_code == 401
    assert sign_in(app.test_client(), "clerk", new_secret, at=later).status_code == 303
    assert {"console.totp_enrol_failed", "console.totp_enrol"} <= set(_actions(app))


def test_cheap_test_hashing_never_reaches_a_production_app(monkeypatch):
    from argon2 import PasswordHasher
    from flask import Flask

    import console
    from app.services import console_auth

    monkeypatch.setattr(console_auth, "_hasher", PasswordHasher())
    prod = Flask(__name__)
    prod.config.update(APP_ENV="production", TESTING=True)
    console.init_app(prod)
    assert console_auth._hasher.time_cost == 3 and console_auth._hasher.memory_cost == 65536
    assert console_auth.hash_password("a long enough password").startswith("$argon2id$v=19$m=65536,t=3")


def test_a_signed_in_session_that_keeps_guessing_the_password_is_ended(app, client):
    # Review finding: the password checks of signed-in forms were outside the lock-out, so a stolen
    # session could guess the password without limit. After five failures the sessions end.
    signed_in(client, app, "clerk", "window")
    for _ in range(5):
        assert client.get("/console/").status_code == 200
        post(client, "/console/account", {"current_password": "not my password",
                                          "new_password": "a much longer new password"}, page="/console/account")
    response = client.get("/console/")
    assert response.status_code in (302, 303) and "/console/login" in response.headers["Location"]


def test_a_password_typed_as_the_username_is_never_kept_only_its_length_and_a_keyed_hash(app, client, caplog):
    # A common slip: the password goes into the username field. An unknown username is recorded as
    # tried — its length and a keyed hash, so repeated attempts can be told apart and correlated —
    # never as text: not in the audit log, not in the lock-out counts, not in the app log (R17).
    caplog.set_level(logging.DEBUG)
    secret = make_staff(app, "clerk", "window")
    slip = "Correct-Horse-Battery-9"
    for _attempt in range(6):
        assert sign_in(client, slip, secret, ip="10.7.7.7").status_code == 401
    assert sign_in(client, "nobody-else", secret, ip="10.7.7.8").status_code == 401
    assert sign_in(client, "clerk", secret, password="wrong password!!", ip="10.7.7.9").status_code == 401

    with app_session() as session, session.begin():
        rows = [(e.action, e.details) for e in session.scalars(
            select(AuditEvent).where(AuditEvent.action.startswith("console.")).order_by(AuditEvent.id))]
        keys = list(session.scalars(select(ConsoleLockout.key)))
    kept = json.dumps([rows, keys], ensure_ascii=False).lower() + caplog.text.lower()
    assert slip.lower() not in kept and "nobody-else" not in kept
    by_slip = [d for a, d in rows if d.get("unknown_username", {}).get("length") == len(slip)]
    assert [a for a, d in rows if d in by_slip] == (["console.sign_in_failed"] * 5 + ["console.lockout"] * 2
                                                    + ["console.sign_in_locked"])  # the name's and the address's
    assert len({d["unknown_username"]["hmac"] for d in by_slip}) == 1  # one hand, typing the same thing
    assert all("username" not in d for d in by_slip)
    (other,) = [d["unknown_username"] for a, d in rows if d.get("unknown_username", {}).get("length") == 11]
    assert other["hmac"] != by_slip[0]["unknown_username"]["hmac"]
    # a username that names a staff account is kept as it is
    assert [d for a, d in rows if a == "console.sign_in_failed"][-1] == {"username": "clerk", "reason": "password"}
