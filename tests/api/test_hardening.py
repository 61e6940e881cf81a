"""Infrastructure failures become a retryable 503 (never a 500), security headers, deployment warnings."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.demo import OWNER
from app.extensions import RateLimiter
from tests.binding_helpers import sign_in
from tests.helpers import bearer, random_openid, sign_in_wechat

CLOSED_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: every call is refused


def _lost(kind):
    orig = ConnectionError("server closed the connection unexpectedly; id_number 110101199003077777")
    if kind is PoolTimeout:
        return PoolTimeout("QueuePool limit of size 10 overflow 20 reached")
    if kind is DBAPIError:
        return DBAPIError("SELECT 1", {}, orig, connection_invalidated=True)
    return kind("SELECT 1", {"p": "secret"}, orig)


@pytest.mark.parametrize("kind", [OperationalError, InterfaceError, PoolTimeout, DBAPIError])
def test_a_lost_database_is_a_retryable_503_never_a_500(app, client, sandbox, monkeypatch, caplog, kind):
    from app.services import auth

    token = sign_in_wechat(client, sandbox)["access_token"]

    def fail(*_args, **_kwargs):
        raise _lost(kind)

    # The token look-up of every signed-in request (in the request's transaction, or its own, or —
    # GET /me — its one statement in autocommit).
    monkeypatch.setattr("app.web.resolve_token", fail)
    monkeypatch.setattr("app.web.authenticate", fail)
    monkeypatch.setattr("app.web.authenticate_alone", fail)
    with caplog.at_level(logging.WARNING):
        response = client.get("/api/v1/me", headers=bearer(token))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    error = response.get_json()["error"]
    assert error["code"] == "UPSTREAM_UNAVAILABLE" and error["details"]["unavailable"] == "database"
    text = response.get_data(as_text=True) + caplog.text
    assert "110101199003077777" not in text and "secret" not in text  # the driver's text is never shown
    assert auth.authenticate is not fail


def test_another_database_error_is_still_a_500(app, client, sandbox, monkeypatch):
    token = sign_in_wechat(client, sandbox)["access_token"]

    def fail(*_args, **_kwargs):
        raise DBAPIError("SELECT 1", {}, ValueError("bug"), connection_invalidated=False)

    # The token look-up of every signed-in request (in the request's transaction, or its own, or —
    # GET /me — its one statement in autocommit).
    monkeypatch.setattr("app.web.resolve_token", fail)
    monkeypatch.setattr("app.web.authenticate", fail)
    monkeypatch.setattr("app.web.authenticate_alone", fail)
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 500


def test_rate_limits_with_their_store_down_fail_closed_for_id_checks_and_local_elsewhere(
        app, client, sandbox, demo, monkeypatch, caplog):
    owner = sign_in(client, sandbox, OWNER)
    limiter = app.extensions["ratelimiter"]
    broken = RateLimiter(CLOSED_REDIS, (3, 60), (300, 60))
    monkeypatch.setitem(app.extensions, "ratelimiter", broken)
    with caplog.at_level(logging.WARNING):
        # identity verification (ID-number check): refused, 503 with Retry-After, never 500
        response = client.post("/api/v1/me/identity", json={"name": "x", "id_number": OWNER},
                               headers=bearer(sign_in_wechat(client, sandbox)["access_token"]))
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert response.get_json()["error"]["details"]["unavailable"] == "rate_limiter"
        # vouchers: still limited, in this process's memory (3 per user here)
        statuses = [client.post("/api/v1/vouchers", json={}, headers=bearer(owner)).status_code for _ in range(4)]
    assert statuses == [201, 201, 201, 429]
    assert "fail closed" in caplog.text and "fail local" in caplog.text
    assert limiter is not broken


def test_security_headers_on_every_response(app, client):
    for response in (client.get("/healthz"), client.get("/api/v1/nothing-here"), client.get("/api/v1/me")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert "Strict-Transport-Security" not in response.headers  # development serves plain HTTP


def test_api_answers_are_never_stored_by_a_cache_but_the_public_documents_are_left_alone(app, client, sandbox,
                                                                                         demo):
    """Personal data must not be kept by a proxy or the client's cache: every answer under
    /api/v1 (signed-in reads, sign-ins that hand out tokens, errors, institution-signed answers) and
    any answer to a request carrying credentials is ``Cache-Control: no-store``; a response that set
    its own (a document download: ``private, no-store``) keeps it."""
    from tests.money_helpers import HOSPITAL, signed

    token = sign_in_wechat(client, sandbox)["access_token"]
    answers = {
        "me": client.get("/api/v1/me", headers=bearer(token)),
        "sign-in": client.post("/api/v1/auth/wechat", json={"code": sandbox.issue_wechat_login_code(random_openid())}),
        "no token": client.get("/api/v1/me"),
        "unknown route": client.get("/api/v1/nothing-here", headers=bearer(token)),
        "institution": signed(client, HOSPITAL, None, "GET", "/api/v1/institution/settlements/S2025030100000000001"),
        "bearer outside /api/v1": client.get("/healthz", headers=bearer(token)),
    }
    for name, response in answers.items():
        assert response.headers.get("Cache-Control") == "no-store", (name, response.status_code)
    for path in ("/healthz", "/readyz", "/api/openapi.json"):
        assert "Cache-Control" not in client.get(path).headers, path


def test_the_api_docs_page_keeps_working_and_is_never_framed(app, client):
    response = client.get("/api/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert response.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
    assert response.headers["X-Frame-Options"] == "DENY"


def test_a_blueprint_may_set_its_own_policy(app):
    from flask import Flask

    from app.security import http_headers

    other = Flask("console")
    other.config.update(APP_ENV="production", TRUSTED_PROXIES=1)
    http_headers.init_app(other)

    @other.get("/console")
    def console():
        return "<html></html>", 200, {"Content-Security-Policy": "default-src 'self'"}

    response = other.test_client().get("/console")
    assert response.headers["Content-Security-Policy"] == "default-src 'self'"
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")


def test_production_without_trusted_proxies_warns(caplog):
    from flask import Flask

    from app.security import http_headers

    other = Flask("prod")
    other.config.update(APP_ENV="production", TRUSTED_PROXIES=0)
    with caplog.at_level(logging.WARNING):
        http_headers.init_app(other)
    assert "TRUSTED_PROXIES" in caplog.text
    caplog.clear()
    other2 = Flask("prod2")
    other2.config.update(APP_ENV="production", TRUSTED_PROXIES=1)
    with caplog.at_level(logging.WARNING):
        http_headers.init_app(other2)
    assert "TRUSTED_PROXIES" not in caplog.text


def test_development_mode_warns_when_a_client_from_another_machine_reaches_it(make_app, caplog):
    client = make_app().test_client()
    with caplog.at_level(logging.WARNING):
        client.get("/healthz")
        assert "development mode" not in caplog.text
        client.get("/healthz", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert "development mode is serving a client from another machine" in caplog.text


@pytest.mark.parametrize("bounds", [{"since": "0001-01-01"}, {"until": "9999-12-31"},
                                    {"since": "0001-01-01", "until": "9999-12-31"}])
def test_audit_log_dates_at_the_ends_of_the_calendar_are_no_500(client, demo, bounds):
    # Found by the fuzzer: a date whose Shanghai midnight lies outside the UTC range overflowed.
    response = client.get("/api/v1/staff/audit-log", query_string=bounds, headers=bearer(demo.tokens["admin1"]))
    assert response.status_code == 200, response.get_json()
