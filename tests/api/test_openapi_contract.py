"""The OpenAPI document tells the truth (issue 10): the SPEC error envelope, every error code, 400 for
validation, security per operation, bounded integers, a docs page that works on a closed network;
and the edge answers behind it (malformed JSON, wrong content type, deep nesting, huge ids, 6 MB)."""

from __future__ import annotations

import io
import json
import re

import pytest

from app.i18n import default_messages
from app.schema_fields import MAX_ID
from tests.binding_helpers import sign_in
from tests.helpers import bearer

# SPEC §5, copied here on purpose: the document must carry every one of them.
SPEC_CODES = """VALIDATION_ERROR UNAUTHENTICATED FORBIDDEN NOT_FOUND INVALID_STATE IDEMPOTENCY_CONFLICT
PAYLOAD_TOO_LARGE UNSUPPORTED_MEDIA_TYPE RATE_LIMITED UPSTREAM_UNAVAILABLE LOGIN_CODE_INVALID ID_NUMBER_INVALID
IDENTITY_MISMATCH OWNER_NOT_ELIGIBLE BENEFICIARY_MISMATCH BENEFICIARY_NOT_ELIGIBLE SELF_BINDING ALREADY_BOUND
TOO_MANY_BINDINGS RELATIONSHIP_NOT_ALLOWED PROOF_REQUIRED PLEDGE_INVALID BINDING_NOT_ACTIVE VOUCHER_INVALID
VOUCHER_EXPIRED VOUCHER_USED REFUND_EXCEEDS_PAID LIMIT_ABOVE_CAP SERVICE_TIME_OUT_OF_RANGE IDENTITY_NOT_PROVEN
PHONE_MISMATCH PHONE_NOT_VERIFIED CARD_INVALID INSTITUTION_NOT_DESIGNATED SIGNATURE_INVALID TIMESTAMP_OUT_OF_WINDOW
NONCE_REUSED""".split()
METHODS = ("get", "post", "put", "patch", "delete")
TOO_BIG = 2**63


@pytest.fixture
def document(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def operations(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def resolve(document, schema):
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
    return schema


def test_every_spec_error_code_is_in_the_shared_error_component(document):
    code = document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
    assert code["type"] == "string"
    assert set(SPEC_CODES) <= set(code["enum"])
    assert set(default_messages()) == set(code["enum"])  # and every code the service can send


def test_every_spec_error_code_is_listed_by_some_operation(document):
    listed = set()
    for _path, _method, operation in operations(document):
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")):
                listed |= set(response["content"]["application/json"]["examples"])
                assert all(f"`{c}`" in operation["description"]
                           for c in response["content"]["application/json"]["examples"])
    assert set(SPEC_CODES) <= listed


def test_every_error_response_is_the_spec_envelope_and_validation_is_400(document):
    assert "DEFAULT_ERROR" not in document["components"].get("responses", {})
    for path, method, operation in operations(document):
        responses = operation["responses"]
        assert "default" not in responses, (method, path)
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
        if "requestBody" in operation or operation.get("parameters"):
            assert "400" in responses, (method, path)
            assert "VALIDATION_ERROR" in responses["400"]["content"]["application/json"]["examples"]
        if "422" in responses:  # 422 is for rule violations only
            assert "VALIDATION_ERROR" not in responses["422"]["content"]["application/json"]["examples"]


def test_every_operation_declares_its_security(document, app):
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "description": schemes["bearer"]["description"]}
    headers = {schemes[name]["name"] for name in schemes if name != "bearer"}
    assert headers == {"X-Inst-Code", "X-Timestamp", "X-Nonce", "X-Signature"}
    for path, method, operation in operations(document):
        assert "security" in operation, (method, path)
        if path.startswith("/api/v1/institution/"):
            assert operation["security"] == [{name: [] for name in schemes if name != "bearer"}]
            assert "METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\nsha256hex(body)" in operation["description"]
        elif path.startswith(("/api/v1/staff/", "/api/v1/me", "/api/v1/bindings", "/api/v1/records")):
            assert operation["security"] == [{"bearer": []}], (method, path)
    public = {(p, m) for p, m, o in operations(document) if o["security"] == []}
    assert ("/api/v1/auth/wechat", "post") in public and ("/api/v1/pledges/current", "get") in public


def test_every_signed_in_operation_with_a_body_lists_only_its_own_rule_codes(app):
    """An operation missing in ``OPERATION_CODES`` is documented with every 409 and 422 code of the
    service (true, but it tells a client nothing): each operation that takes a body from a signed-in
    caller names the codes it can answer."""
    from app.contract import BODY_METHODS, OPERATION_CODES

    missing = sorted(rule.endpoint for rule in app.url_map.iter_rules()
                     if rule.rule.startswith("/api/v1/") and rule.methods & BODY_METHODS
                     and getattr(app.view_functions[rule.endpoint], "api_auth", (None,))[0] is not None
                     and rule.endpoint not in OPERATION_CODES)
    assert missing == []


def test_every_operation_documents_the_503_of_a_database_or_redis_outage(document):
    """Any operation answers 503 UPSTREAM_UNAVAILABLE with Retry-After when the database or Redis is
    away (app/errors_http.py; tests/faults): a client must learn from the document that it may retry."""
    for path, method, operation in operations(document):
        examples = operation["responses"].get("503", {}).get("content", {}).get("application/json", {})
        assert "UPSTREAM_UNAVAILABLE" in examples.get("examples", {}), (method, path)


def test_the_phone_proof_documents_only_its_own_codes(document):
    responses = document["paths"]["/api/v1/me/phone"]["post"]["responses"]
    assert sorted(responses["422"]["content"]["application/json"]["examples"]) == ["PHONE_NOT_VERIFIED"]
    assert "409" not in responses


def _integers(document, schema, where, seen=frozenset()):
    schema = resolve(document, schema) if "$ref" in schema else schema
    if schema.get("type") == "integer":
        yield where, schema
    for name, child in schema.get("properties", {}).items():
        key = json.dumps(child, sort_keys=True)
        if key not in seen:
            yield from _integers(document, child, f"{where}.{name}", seen | {key})
    if "items" in schema:
        yield from _integers(document, schema["items"], f"{where}[]", seen)


def test_every_integer_a_client_sends_is_bounded(document):
    checked = 0
    for path, method, operation in operations(document):
        sources = [(f"{p['in']}:{p['name']}", p["schema"]) for p in operation.get("parameters", [])]
        sources += [(f"body({ctype})", media["schema"])
                    for ctype, media in operation.get("requestBody", {}).get("content", {}).items()]
        for where, schema in sources:
            for field, integer in _integers(document, schema, where):
                checked += 1
                assert "minimum" in integer and "maximum" in integer, (method, path, field)
                assert integer["maximum"] <= MAX_ID, (method, path, field)
    assert checked > 10


def test_request_examples_are_valid_json_for_the_main_operations(document):
    for path, method in [("/api/v1/bindings", "post"), ("/api/v1/institution/settlements", "post"),
                         ("/api/v1/me/identity", "post"), ("/api/v1/staff/bindings", "post")]:
        body = document["paths"][path][method]["requestBody"]["content"]["application/json"]
        assert isinstance(body["example"], dict) and body["example"]


def test_the_docs_page_loads_swagger_ui_from_the_app_itself(client):
    page = client.get("/api/docs").get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(asset.startswith("/static/swagger-ui/") for asset in assets), assets
    assert "http://" not in page and "https://" not in page
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200 and len(response.data) > 1000, asset


# --- the edges the document promises ---------------------------------------------------------------


@pytest.fixture
def owner(client, sandbox, demo):
    from app.demo import OWNER

    return sign_in(client, sandbox, OWNER)


def test_malformed_json_says_the_body_is_not_json(client, owner):
    response = client.post("/api/v1/bindings", data='{"beneficiary": ', headers=bearer(owner) | {
        "Content-Type": "application/json", "Accept-Language": "en"})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert (error["code"], error["details"]) == ("VALIDATION_ERROR", {"reason": "malformed_json"})
    assert "not valid JSON" in error["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_body_without_the_json_content_type_is_415_and_says_so(client, owner, content_type):
    """application/x-www-form-urlencoded is what plain ``curl -d '{…}'`` sends."""
    response = client.post("/api/v1/bindings", data=json.dumps({"relationship": "child"}),
                           headers=bearer(owner) | {"Content-Type": content_type, "Accept-Language": "en"})
    assert response.status_code == 415
    error = response.get_json()["error"]
    assert error["code"] == "UNSUPPORTED_MEDIA_TYPE" and "application/json" in error["message"]
    assert error["details"] == {"content_type": content_type, "expected": "application/json"}


@pytest.mark.parametrize("depth", [33, 100_000])
def test_deeply_nested_json_is_400_not_500(client, owner, depth):
    body = '{"beneficiary": ' + "[" * depth + "]" * depth + "}"
    response = client.post("/api/v1/bindings", data=body, headers=bearer(owner) | {"Content-Type": "application/json"})
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["details"]["reason"] == "too_deep"


@pytest.mark.parametrize("path", ["/api/v1/bindings/{}", "/api/v1/documents/{}", "/api/v1/bindings/{}/pledge"])
@pytest.mark.parametrize("value", [TOO_BIG, 10**30, 0])
def test_out_of_range_path_ids_are_404(client, owner, path, value):
    response = client.get(path.format(value), headers=bearer(owner))
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "NOT_FOUND"


def test_out_of_range_ids_in_query_and_body_are_400(client, owner, demo):
    assert client.get(f"/api/v1/records/authorizations?binding_id={TOO_BIG}",
                      headers=bearer(owner)).status_code == 400
    assert client.get(f"/api/v1/staff/audit-log?actor_id={TOO_BIG}",
                      headers=bearer(demo.tokens["auditor1"])).status_code == 400
    assert client.post("/api/v1/vouchers", json={"person_id": TOO_BIG}, headers=bearer(owner)).status_code == 400
    assert client.post("/api/v1/staff/suspensions", json={"binding_id": TOO_BIG, "reason": "x"},
                       headers=bearer(demo.tokens["admin1"])).status_code == 400
    response = client.post("/api/v1/bindings", json={"proof_document_ids": [TOO_BIG]}, headers=bearer(owner))
    assert response.status_code == 400
    assert "proof_document_ids" in response.get_json()["error"]["details"]["fields"]["json"]


@pytest.mark.parametrize("value", ["１０", "٥", "1_0", "%2010", "+10", "10%0A"])
def test_integers_in_a_query_are_ascii_digits_only(client, owner, demo, value):
    """int() takes "１０" (and "٥", "1_0", " 10", "+10"): the document says integer, so only
    ASCII digits are one — as in a path, where Werkzeug already refuses them."""
    auditor = bearer(demo.tokens["auditor1"])
    for url, headers in ((f"/api/v1/records/deductions?limit={value}", bearer(owner)),
                         (f"/api/v1/records/authorizations?binding_id={value}", bearer(owner)),
                         (f"/api/v1/bindings?limit={value}", bearer(owner)),
                         (f"/api/v1/quota?year={value}", bearer(owner)),
                         (f"/api/v1/notifications?limit={value}", bearer(owner)),
                         (f"/api/v1/staff/notices?limit={value}", auditor),
                         (f"/api/v1/staff/audit-log?actor_id={value}", auditor),
                         (f"/api/v1/staff/audit-log?target_id={value}", auditor)):
        response = client.get(url, headers=headers)
        assert response.status_code == 400, (url, response.get_json())
        assert response.get_json()["error"]["code"] == "VALIDATION_ERROR"


def test_a_6_mb_upload_names_the_5_mb_limit(client, owner):
    data = {"file": (io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\0" * (6 * 1024 * 1024)), "big.png")}
    for language, words in (("en", "at most 5 MB"), ("zh-CN", "不能超过 5 MB")):
        response = client.post("/api/v1/documents", data=dict(data) if language == "en" else {
            "file": (io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\0" * (6 * 1024 * 1024)), "big.png")},
            headers=bearer(owner) | {"Accept-Language": language}, content_type="multipart/form-data")
        assert response.status_code == 413
        error = response.get_json()["error"]
        assert error["code"] == "PAYLOAD_TOO_LARGE" and words in error["message"]
        assert error["details"]["max_bytes"] == 5 * 1024 * 1024


def test_an_unknown_route_gets_a_short_envelope_404(client):
    for language, message in (("en", "Not found."), (None, "未找到。")):
        headers = {"Accept-Language": language} if language else {}
        response = client.get("/api/v1/no/such/route", headers=headers)
        assert response.status_code == 404
        assert response.get_json() == {"error": {"code": "NOT_FOUND", "message": message, "details": {}}}


def test_the_main_examples_work_as_they_stand_against_the_demo(client, sandbox, demo, document):
    def example(path, method="post"):
        return document["paths"][path][method]["requestBody"]["content"]["application/json"]["example"]

    from app.demo import DEMO_PHONES, OWNER
    from tests.helpers import prove_phone_wechat, random_openid, sign_in_wechat

    openid = random_openid()
    token = sign_in_wechat(client, sandbox, openid)["access_token"]
    # R21: the example proves identity by the phone the platform proved equal to the reserved one.
    assert prove_phone_wechat(client, sandbox, token, openid, DEMO_PHONES[OWNER]).status_code == 200
    assert client.post("/api/v1/me/identity", json=example("/api/v1/me/identity"),
                       headers=bearer(token)).status_code == 200
    assert client.post("/api/v1/bindings", json=example("/api/v1/bindings"), headers=bearer(token)).status_code == 201
    assert client.post("/api/v1/vouchers", json=example("/api/v1/vouchers"), headers=bearer(token)).status_code == 201
    window = bearer(demo.tokens["window1"])
    assert client.post("/api/v1/staff/bindings", json=example("/api/v1/staff/bindings"),
                       headers=window).status_code == 201


def test_a_nul_character_anywhere_is_400_not_a_database_error(client, owner, demo):
    """PostgreSQL text cannot hold U+0000; the fuzzer found it as a 500 from a staff query."""
    auditor = bearer(demo.tokens["auditor1"])
    answers = [
        client.get("/api/v1/staff/audit-log?target_kind=%00x", headers=auditor),
        client.get("/api/v1/staff/audit-log?action=a%00b", headers=auditor),
        client.post("/api/v1/staff/bindings/search", json={"owner_id_number": "1\x00"}, headers=auditor),
        client.post("/api/v1/bindings/1/unbind", json={"reason": "x\x00y"}, headers=bearer(owner)),
        client.post("/api/v1/subscriptions", json={"channel": "wechat", "mode": "one_time",
                                                   "results": {"t\x00": "accept"}}, headers=bearer(owner)),
    ]
    for response in answers:
        assert response.status_code == 400, response.get_json()
        assert response.get_json()["error"]["details"] == {"reason": "nul_character"}
