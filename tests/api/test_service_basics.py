"""The error envelope for every error, health endpoints and the OpenAPI document (SPEC §5)."""

from __future__ import annotations


def assert_envelope(response, status: int, code: str) -> None:
    assert response.status_code == status
    body = response.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)


def test_an_unknown_path_is_a_json_404(client):
    assert_envelope(client.get("/api/v1/nothing-here"), 404, "NOT_FOUND")


def test_a_wrong_method_is_a_json_405(client):
    assert_envelope(client.get("/api/v1/auth/wechat"), 405, "METHOD_NOT_ALLOWED")


def test_a_malformed_body_is_a_400_validation_error(client):
    response = client.post("/api/v1/auth/wechat", json={"not_code": 1})
    assert_envelope(response, 400, "VALIDATION_ERROR")
    assert "code" in response.get_json()["error"]["details"]["fields"]["json"]


def test_a_body_over_the_limit_is_a_json_413(client):
    response = client.post("/api/v1/auth/wechat", data=b"x" * (6 * 1024 * 1024), content_type="application/json")
    assert_envelope(response, 413, "PAYLOAD_TOO_LARGE")


def test_an_unexpected_failure_is_a_json_500_without_internals(client, sandbox, monkeypatch):
    from app.services import identity
    from tests.helpers import bearer, sign_in_wechat

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(identity, "describe_me", boom)
    token = sign_in_wechat(client, sandbox)["access_token"]
    response = client.get("/api/v1/me", headers=bearer(token))
    assert_envelope(response, 500, "INTERNAL_ERROR")
    assert "secret internals" not in response.get_data(as_text=True)


def test_healthz_and_readyz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"]["database"] == "ok"


def test_the_openapi_document_lists_the_sign_in_endpoints(client):
    spec = client.get("/api/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/auth/wechat" in spec["paths"]
    assert "/api/v1/me/identity" in spec["paths"]


def test_an_audit_row_carries_the_request_id_of_the_request_that_wrote_it(client, sandbox):
    from sqlalchemy import select

    from app.extensions import app_session
    from models import AuditEvent

    response = client.post("/api/v1/auth/wechat", json={"code": sandbox.issue_wechat_login_code("o-audit-rid")},
                           headers={"X-Request-Id": "rid0123456789"})
    assert response.headers["X-Request-Id"] == "rid0123456789"
    with app_session() as session, session.begin():
        rows = session.scalars(select(AuditEvent.request_id).where(AuditEvent.action == "auth.sign_in")).all()
    assert rows == ["rid0123456789"]


def test_the_openapi_document_describes_proofs_phones_cards_and_their_errors(client):
    """Issue 9: the new endpoints, fields and error codes are in the OpenAPI document."""
    import json

    spec = client.get("/api/openapi.json").get_json()
    for path in ("/api/v1/me/identity/window-code", "/api/v1/me/phone", "/api/v1/staff/identity-links",
                 "/api/v1/staff/persons/phone", "/api/v1/bindings/{binding_id}/decline"):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    assert {"wechat_realname_code", "alipay_auth_code", "phone"} <= set(schemas["IdentityProof"]["properties"])
    assert {"wechat_code", "alipay_response"} <= set(schemas["PhoneProofRequest"]["properties"])
    assert {"voucher_code", "card"} <= set(schemas["SettlementRequest"]["properties"])
    assert "auth_method" in schemas["Settlement"]["properties"]
    text = json.dumps(spec, ensure_ascii=False)
    for code in ("IDENTITY_NOT_PROVEN", "IDENTITY_MISMATCH", "PHONE_NOT_VERIFIED", "PHONE_MISMATCH", "CARD_INVALID"):
        assert code in text, code
