"""Institution request signing (SPEC §5): signature, timestamp window, single-use nonce, secret rotation."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

from app.extensions import app_session
from app.services.registry import load_registry
from models import Institution, InstitutionNonce
from tests.money_helpers import HOSPITAL, SECRETS, fresh, sign_headers, signed

MISSING = "/api/v1/institution/settlements/S000"  # passes authentication, then 404


@pytest.fixture
def registry(app, demo):
    fresh(app)
    return demo


def code_of(response):
    return response.status_code, response.get_json()["error"]["code"]


def test_a_correctly_signed_request_gets_past_authentication(client, registry):
    assert code_of(signed(client, HOSPITAL, None, "GET", MISSING)) == (404, "NOT_FOUND")


@pytest.mark.parametrize("drop", ["X-Inst-Code", "X-Timestamp", "X-Nonce", "X-Signature"])
def test_a_request_without_each_signing_header_is_refused(client, registry, drop):
    headers = sign_headers(HOSPITAL, SECRETS[HOSPITAL], "GET", MISSING, b"")
    del headers[drop]
    response = client.get(MISSING, headers=headers)
    assert code_of(response) == (401, "SIGNATURE_INVALID")
    assert response.get_json()["error"]["details"]["missing"] == [drop]


def test_a_request_signed_with_another_secret_is_refused(client, registry):
    assert code_of(signed(client, HOSPITAL, "not-the-hospital-secret", "GET", MISSING)) == (401, "SIGNATURE_INVALID")


def test_an_unknown_institution_looks_like_a_bad_signature(client, registry):
    assert code_of(signed(client, "H0000000", "whatever-secret-1234", "GET", MISSING)) == (401, "SIGNATURE_INVALID")


def test_a_body_changed_after_signing_is_refused(client, registry):
    body = json.dumps({"out_settlement_no": "A1", "voucher_code": "1", "items": []}).encode()
    path = "/api/v1/institution/settlements"
    headers = sign_headers(HOSPITAL, SECRETS[HOSPITAL], "POST", path, body)
    response = client.post(path, data=body.replace(b"A1", b"A2"), headers=headers, content_type="application/json")
    assert code_of(response) == (401, "SIGNATURE_INVALID")


def test_the_query_string_is_part_of_what_is_signed(client, registry):
    headers = sign_headers(HOSPITAL, SECRETS[HOSPITAL], "GET", MISSING, b"")
    assert code_of(client.get(MISSING + "?page=2", headers=headers)) == (401, "SIGNATURE_INVALID")
    assert code_of(signed(client, HOSPITAL, None, "GET", MISSING + "?page=2")) == (404, "NOT_FOUND")


@pytest.mark.parametrize("skew", [-301, 301, 3600])
def test_a_timestamp_outside_five_minutes_is_refused(client, registry, skew):
    response = signed(client, HOSPITAL, None, "GET", MISSING, timestamp=int(time.time()) + skew)
    assert code_of(response) == (401, "TIMESTAMP_OUT_OF_WINDOW")


def test_a_nonce_is_accepted_once(client, registry):
    assert code_of(signed(client, HOSPITAL, None, "GET", MISSING, nonce="nonce-0001"))[1] == "NOT_FOUND"
    assert code_of(signed(client, HOSPITAL, None, "GET", MISSING, nonce="nonce-0001")) == (401, "NONCE_REUSED")


def test_a_forged_request_does_not_burn_the_nonce(client, registry):
    forged = signed(client, HOSPITAL, "forged-secret-000000", "GET", MISSING, nonce="nonce-0002")
    assert code_of(forged) == (401, "SIGNATURE_INVALID")
    assert code_of(signed(client, HOSPITAL, None, "GET", MISSING, nonce="nonce-0002"))[1] == "NOT_FOUND"


def test_without_redis_nonces_are_kept_in_the_database(make_app, registry):
    app = make_app(REDIS_URL=None)
    client = app.test_client()
    with app.app_context():
        assert code_of(signed(client, HOSPITAL, None, "GET", MISSING, nonce="nonce-db-01"))[1] == "NOT_FOUND"
        assert code_of(signed(client, HOSPITAL, None, "GET", MISSING, nonce="nonce-db-01")) == (401, "NONCE_REUSED")
        with app_session() as s, s.begin():
            assert s.scalar(select(func.count()).select_from(InstitutionNonce)) == 1


def test_a_database_nonce_past_its_keeping_time_may_be_used_again(make_app, registry):
    app = make_app(REDIS_URL=None)
    client = app.test_client()
    with app.app_context():
        with app_session() as s, s.begin():
            hospital = s.scalar(select(Institution.id).where(Institution.code == HOSPITAL))
            s.execute(insert(InstitutionNonce).values(institution_id=hospital, nonce="nonce-old-01",
                                                      expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        assert code_of(signed(client, HOSPITAL, None, "GET", MISSING, nonce="nonce-old-01"))[1] == "NOT_FOUND"


def test_when_redis_is_configured_but_down_requests_fail_closed(app, client, registry, monkeypatch):
    import redis

    down = redis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.5)
    monkeypatch.setattr(app.extensions["domain"].institutions, "redis", down)
    assert code_of(signed(client, HOSPITAL, None, "GET", MISSING)) == (503, "UPSTREAM_UNAVAILABLE")


NEW_SECRET = "rotated-secret-for-H5326001"


@pytest.fixture
def clock(app, monkeypatch):
    """A hand-moved clock for the authenticator's secret cache."""
    now = [1000.0]
    monkeypatch.setattr(app.extensions["domain"].institutions, "clock", lambda: now[0])
    return now


def rotate_hospital_secret(app):
    row = {"code": HOSPITAL, "name": "文山州人民医院", "kind": "hospital", "region_code": "532601",
           "designated": True, "api_secret": NEW_SECRET}
    with app_session() as session:
        load_registry(session, app.extensions["domain"].pii,
                      {"persons": [], "accounts": [], "households": [], "institutions": [row]}, datetime.now(UTC))


def test_a_rotated_secret_works_at_once(app, client, registry, clock):
    assert code_of(signed(client, HOSPITAL, None, "GET", MISSING))[1] == "NOT_FOUND"  # the old secret is cached
    rotate_hospital_secret(app)
    clock[0] += 2  # past the one-second guard against re-reading on every bad signature
    assert code_of(signed(client, HOSPITAL, NEW_SECRET, "GET", MISSING))[1] == "NOT_FOUND"
    assert code_of(signed(client, HOSPITAL, None, "GET", MISSING)) == (401, "SIGNATURE_INVALID")


def test_the_old_secret_stops_working_within_the_cache_time(app, client, registry, clock):
    assert code_of(signed(client, HOSPITAL, None, "GET", MISSING))[1] == "NOT_FOUND"
    rotate_hospital_secret(app)
    clock[0] += 10
    assert code_of(signed(client, HOSPITAL, None, "GET", MISSING))[1] == "NOT_FOUND"  # still cached (30 s)
    clock[0] += 21
    assert code_of(signed(client, HOSPITAL, None, "GET", MISSING)) == (401, "SIGNATURE_INVALID")


def test_the_curl_signing_script_signs_as_the_service_verifies(app, client, registry):
    """scripts/sign_request.py (standard library only, for institutions' developers) agrees with the service."""
    from app.security.request_signing import sign
    from scripts.sign_request import DEMO_CODE, DEMO_SECRET, signed_headers

    body = b'{"out_refund_no": "RF-1",\n "amount_fen": 1}'
    headers = signed_headers(DEMO_CODE, DEMO_SECRET, "POST", MISSING + "/refunds", body, timestamp=1700000000,
                             nonce="n-0001-abcd")
    assert headers["X-Signature"] == sign(SECRETS[HOSPITAL], "POST", MISSING + "/refunds", "1700000000",
                                          "n-0001-abcd", body)
    fresh_headers = signed_headers(DEMO_CODE, DEMO_SECRET, "GET", MISSING, b"")
    assert code_of(client.get(MISSING, headers=fresh_headers)) == (404, "NOT_FOUND")
