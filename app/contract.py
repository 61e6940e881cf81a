"""The API contract as it really is: request-body checks, bounded path ids, and the OpenAPI document.

- ``install_converters``: ``<int:…>`` in every route is an id 1 … 2^63 − 1; anything else does not
  match the route (404), and the bounds appear in the document.
- ``check_request_body`` (before each request): an operation that reads a JSON body refuses a
  body that is not JSON (415, saying so), malformed JSON (400, saying so) and JSON nested deeper
  than ``MAX_JSON_DEPTH`` (400) before any parser recurses into it.
- ``finalize_document``: applied to the document flask-smorest builds, for every operation the app
  has (so operations added later are covered without a change here): the error envelope as
  one shared component whose ``code`` enumerates every error code, each error status the operation
  can return with its codes listed (description and one example per code), 400 for validation
  (never 422 for a malformed request), the security each operation needs, and request examples.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app, request
from werkzeug.routing import IntegerConverter

from app import errors
from app.i18n import HTTP_ONLY_MESSAGES, default_messages, message_for
from app.schema_fields import MAX_ID

MAX_JSON_DEPTH = 32
_NUL_ESCAPE = b"\\u0000"  # the six bytes \u0000
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ERROR_SCHEMA = "Error"
INSTITUTION_HEADERS = ("X-Inst-Code", "X-Timestamp", "X-Nonce", "X-Signature")
INSTITUTION_SCHEMES = ("institutionCode", "institutionTimestamp", "institutionNonce", "institutionSignature")
CANONICAL_STRING = (
    "Institution requests are signed: `X-Inst-Code` (the institution code), `X-Timestamp` "
    "(unix seconds, within ±300 s of the server clock), `X-Nonce` (a fresh random string; each is "
    "accepted once) and `X-Signature` = lowercase hex HMAC-SHA256(institution secret, "
    "`METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\nsha256hex(body)`), where PATH is the full request path from "
    "`/api/v1` (plus `?query` when there is one) and body the exact bytes sent (empty for GET). "
    "`scripts/sign_request.py` signs a request from the command line."
)

# Which rule-violation (422) and conflict (409) codes an operation can return, by endpoint. An
# operation not listed here is documented with every code of those statuses (still true, less exact).
_BIND = ["ID_NUMBER_INVALID", "OWNER_NOT_ELIGIBLE", "BENEFICIARY_MISMATCH", "BENEFICIARY_NOT_ELIGIBLE",
         "SELF_BINDING", "ALREADY_BOUND", "TOO_MANY_BINDINGS", "RELATIONSHIP_NOT_ALLOWED", "PROOF_REQUIRED",
         "PLEDGE_INVALID"]
OPERATION_CODES: dict[str, dict[int, list[str]]] = {
    "auth.sign_in_wechat": {401: ["LOGIN_CODE_INVALID"], 503: ["UPSTREAM_UNAVAILABLE"]},
    "auth.sign_in_alipay": {401: ["LOGIN_CODE_INVALID"], 503: ["UPSTREAM_UNAVAILABLE"]},
    "auth.refresh": {401: ["UNAUTHENTICATED"]},
    # R21 (issue 9) adds the proof codes to identity verification.
    "me.verify_identity": {409: ["INVALID_STATE"], 422: [
        "ID_NUMBER_INVALID", "IDENTITY_MISMATCH", "IDENTITY_NOT_PROVEN", "PHONE_NOT_VERIFIED", "PHONE_MISMATCH"]},
    "bindings.bind": {409: [], 422: _BIND},
    "staff_bindings.bind_at_window": {409: [], 422: _BIND},
    "staff_bindings.search": {409: [], 422: ["ID_NUMBER_INVALID"]},
    "bindings.set_yearly_limit": {409: ["INVALID_STATE"], 422: ["LIMIT_ABOVE_CAP"]},
    "bindings.confirm": {409: ["INVALID_STATE"], 422: _BIND[1:]},
    "staff_bindings.approve": {409: ["INVALID_STATE"], 422: _BIND[1:]},
    "staff_bindings.reject": {409: ["INVALID_STATE"], 422: []},
    "bindings.unbind": {409: ["INVALID_STATE"], 422: []},
    "staff_bindings.unbind": {409: ["INVALID_STATE"], 422: []},
    "staff_suspensions.suspend": {409: ["INVALID_STATE"], 422: ["ID_NUMBER_INVALID"]},
    "staff_suspensions.lift": {409: ["INVALID_STATE"], 422: []},
    "staff_identity.search_identity_links": {409: [], 422: ["ID_NUMBER_INVALID"]},
    "staff_identity.link_identity": {409: ["INVALID_STATE"], 422: ["ID_NUMBER_INVALID", "IDENTITY_NOT_PROVEN"]},
    "staff_identity.set_person_phone": {409: [], 422: ["ID_NUMBER_INVALID"]},
    "me.prove_phone": {409: [], 422: ["PHONE_NOT_VERIFIED"], 503: ["UPSTREAM_UNAVAILABLE"]},
    "me.window_code": {409: [], 422: [], 429: ["RATE_LIMITED"]},
    "auth.logout": {409: [], 422: []},
    "bindings.decline": {409: ["INVALID_STATE"], 422: []},
    "vouchers.voucher_png": {409: [], 422: []},
    "vouchers.voucher_svg": {409: [], 422: []},
    "staff_identity.end_identity_link": {409: ["INVALID_STATE"], 422: []},
    "staff_filings.create_offsite_filing": {409: ["INVALID_STATE"], 422: ["ID_NUMBER_INVALID"]},
    "staff_filings.create_chronic_certification": {409: ["INVALID_STATE"], 422: ["ID_NUMBER_INVALID"]},
    "vouchers.issue_voucher": {409: [], 422: ["BINDING_NOT_ACTIVE", "BENEFICIARY_NOT_ELIGIBLE"]},
    "institution_settlements.create_settlement": {
        409: ["IDEMPOTENCY_CONFLICT"],
        422: ["VOUCHER_INVALID", "VOUCHER_EXPIRED", "VOUCHER_USED", "BINDING_NOT_ACTIVE", "BENEFICIARY_NOT_ELIGIBLE",
              "SERVICE_TIME_OUT_OF_RANGE", "CARD_INVALID"],
        # R12: failed card look-ups are limited per institution (app/services/card_guard.py), not
        # by the request rate limiter that documents 429 for the operations it guards.
        429: ["RATE_LIMITED"],
    },
    "institution_settlements.refund": {409: ["IDEMPOTENCY_CONFLICT"], 422: ["REFUND_EXCEEDS_PAID"]},
    "documents.upload": {409: [], 422: []},
    "subscriptions.record": {409: [], 422: []},
    "staff_notices.resend": {409: ["INVALID_STATE"], 422: []},
    "notifications.mark_read": {409: [], 422: []},
    # WeChat's message push: signed with the push token in the query (signature, timestamp, nonce).
    "wechat_callbacks.verify_url": {401: ["SIGNATURE_INVALID"], 404: ["NOT_FOUND"]},
    "wechat_callbacks.receive_push": {400: ["VALIDATION_ERROR"], 401: ["SIGNATURE_INVALID"], 404: ["NOT_FOUND"]},
}

# Successful answers that are not JSON (flask-smorest documents only the JSON ones).
NON_JSON_SUCCESS: dict[str, dict[str, Any]] = {
    "documents.download": {"200": {"description": "The stored file (JPEG, PNG or PDF).", "content": {
        ctype: {"schema": {"type": "string", "format": "binary"}}
        for ctype in ("image/jpeg", "image/png", "application/pdf")}}},
    "vouchers.voucher_png": {"200": {"description": "The voucher's QR code.", "content": {
        "image/png": {"schema": {"type": "string", "format": "binary"}}}}},
    "vouchers.voucher_svg": {"200": {"description": "The voucher's QR code.", "content": {
        "image/svg+xml": {"schema": {"type": "string"}}}}},
    "wechat_callbacks.verify_url": {"200": {"description": "The echostr, when the signature is WeChat's.",
                                            "content": {"text/plain": {"schema": {"type": "string"}}}}},
    "wechat_callbacks.receive_push": {"200": {"description": "`success` (plain text), or an encrypted reply in "
                                                             "safe mode.", "content": {
        "text/plain": {"schema": {"type": "string"}}, "application/xml": {"schema": {"type": "string"}},
        "application/json": {"schema": {"type": "object"}}}}},
}

# The demo's invented people (app/demo.py): the examples work against `make run` as they stand.
_OWNER, _CHILD, _SPOUSE = "532621198001011235", "532621201509011353", "532621198205202244"
_PLEDGE = {"version": "<version from GET /api/v1/pledges/current>",
           "sha256": "<sha256 from GET /api/v1/pledges/current>", "agreed": True}
REQUEST_EXAMPLES: dict[str, dict[str, Any]] = {
    "auth.sign_in_wechat": {"code": "<wx.login code>"},
    "auth.sign_in_alipay": {"auth_code": "<my.getAuthCode authCode>"},
    "auth.refresh": {"refresh_token": "<refresh token>"},
    "me.prove_phone": {"wechat_code": "<getPhoneNumber code from the phone button>"},
    "me.verify_identity": {"name": "张伟", "id_number": _OWNER, "proof": {"phone": True}},
    "bindings.bind": {"beneficiary": {"name": "张小明", "id_number": _CHILD, "social_card_no": "M53262100000003"},
                      "relationship": "child", "proof_document_ids": [], "pledge": _PLEDGE},
    "staff_bindings.bind_at_window": {"owner": {"id_number": _OWNER},
                                      "beneficiary": {"name": "李娜", "id_number": _SPOUSE,
                                                      "social_card_no": "M53262100000002"},
                                      "relationship": "spouse", "proof_document_ids": [], "pledge": _PLEDGE},
    "bindings.set_yearly_limit": {"yearly_limit_fen": 200000},
    "bindings.unbind": {"reason": "家庭情况变化"},
    "staff_bindings.approve": {"reason": "材料齐全"},
    "staff_bindings.reject": {"reason": "出生医学证明与户口簿不一致"},
    "staff_suspensions.suspend": {"binding_id": 42, "reason": "疑似套现"},
    "staff_identity.search_identity_links": {"id_number": _OWNER},
    "staff_identity.end_identity_link": {"reason": "本人持身份证到窗口，称该微信账号非本人操作"},
    "staff_filings.create_offsite_filing": {"id_number": _CHILD, "region_prefix": "37",
                                            "valid_from": "2025-03-01", "valid_to": "2025-12-31"},
    "staff_filings.create_chronic_certification": {"id_number": _CHILD, "disease_code": "E11.9",
                                                   "valid_from": "2025-01-01", "valid_to": "2025-12-31"},
    "vouchers.issue_voucher": {},
    "subscriptions.record": {"channel": "wechat", "mode": "one_time", "results": {"<template_id>": "accept"}},
    "institution_settlements.create_settlement": {
        "out_settlement_no": "H5326001-20250301-0001", "voucher_code": "<28-digit voucher code>",
        "items": [{"code": "XA01", "name": "阿莫西林胶囊", "category": "drug", "in_catalogue": True,
                   "amount_fen": 3600},
                  {"code": "110200001", "name": "门诊诊查费", "category": "consultation", "in_catalogue": True,
                   "amount_fen": 1000}],
        "dry_run": False},
    "institution_settlements.refund": {"out_refund_no": "H5326001-R-0001", "amount_fen": 1000},
}

# Stateful links (OpenAPI 3 ``links``): what a client can do next with what an answer gave it.
# source endpoint → (status, {link name: (target endpoint, {parameter: expression}, request body)}).
_BINDING_ID = {"binding_id": "$response.body#/id"}
LINKS: dict[str, tuple[str, dict[str, tuple[str, dict[str, str], dict[str, Any] | None]]]] = {
    "bindings.bind": ("201", {
        "GetBinding": ("bindings.get_binding", _BINDING_ID, None),
        "SetYearlyLimit": ("bindings.set_yearly_limit", _BINDING_ID, None),
        "GetPledge": ("bindings.get_pledge", _BINDING_ID, None),
        "Confirm": ("bindings.confirm", _BINDING_ID, None),
        "Unbind": ("bindings.unbind", _BINDING_ID, None),
        "StaffApprove": ("staff_bindings.approve", _BINDING_ID, None),
        "StaffReject": ("staff_bindings.reject", _BINDING_ID, None),
        "Authorizations": ("authorization_records.list_authorizations", _BINDING_ID, None),
    }),
    "staff_bindings.bind_at_window": ("201", {
        "GetBinding": ("staff_bindings.get_binding", _BINDING_ID, None),
        "GetPledge": ("staff_bindings.get_pledge", _BINDING_ID, None),
        "Authorizations": ("staff_bindings.list_authorizations", _BINDING_ID, None),
        "Unbind": ("staff_bindings.unbind", _BINDING_ID, None),
        "Suspend": ("staff_suspensions.suspend", {}, {"binding_id": "$response.body#/id"}),
    }),
    "documents.upload": ("201", {"Download": ("documents.download", {"document_id": "$response.body#/id"}, None)}),
    "staff_suspensions.suspend": ("201", {"Lift": ("staff_suspensions.lift", {"suspension_id": "$response.body#/id"},
                                                   None)}),
    "vouchers.issue_voucher": ("201", {
        "QrPng": ("vouchers.voucher_png", {}, {"code": "$response.body#/code"}),
        "QrSvg": ("vouchers.voucher_svg", {}, {"code": "$response.body#/code"}),
        "Settle": ("institution_settlements.create_settlement", {}, {"voucher_code": "$response.body#/code"}),
    }),
    "institution_settlements.create_settlement": ("201", {
        "Get": ("institution_settlements.get_settlement", {"settlement_no": "$response.body#/settlement_no"}, None),
        "Refund": ("institution_settlements.refund", {"settlement_no": "$response.body#/settlement_no"}, None),
    }),
}

_STATUS_TEXT = {400: "Malformed request", 401: "Not authenticated", 403: "Not allowed", 404: "Not found",
                409: "Conflict with the current state", 413: "Body too large", 415: "Unsupported media type",
                422: "Rule violation", 429: "Too many requests",
                503: "A platform, the database or Redis is briefly unavailable; retry after Retry-After"}


def _up_to(limit: int) -> str:
    """A regular expression for the decimal numbers 1 … ``limit`` without leading zeros."""
    digits = str(limit)
    shorter = f"[1-9][0-9]{{0,{len(digits) - 2}}}" if len(digits) > 1 else ""
    same_length = []
    for i, digit in enumerate(digits):
        low = "1" if i == 0 else "0"
        if int(digit) > int(low):
            same_length.append(f"{digits[:i]}[{low}-{int(digit) - 1}][0-9]{{{len(digits) - i - 1}}}")
    same_length.append(digits)
    return "(?:" + "|".join(filter(None, [shorter, *same_length])) + ")"


class IdConverter(IntegerConverter):
    """``<int:…>`` path parts: ids 1 … 2^63 − 1 (an out-of-range id is a 404, not a driver error).

    The range is in the pattern itself: a converter that refuses a value only in ``to_python``
    makes Werkzeug answer 405 instead of 404 when another method is routed on the same path.
    """

    regex = _up_to(MAX_ID)

    def __init__(self, map: Any, *args: Any, **kwargs: Any) -> None:  # noqa: A002 — werkzeug's name
        kwargs.setdefault("min", 1)
        kwargs.setdefault("max", MAX_ID)
        super().__init__(map, *args, **kwargs)


def install_converters(app: Flask) -> None:
    """Call before any route is added."""
    app.url_map.converters["int"] = IdConverter


# --- request bodies ---------------------------------------------------------------------------------


def _json_operation(view: Callable[..., Any] | None) -> bool:
    arguments = getattr(view, "_apidoc", {}).get("arguments", {})
    return any(parameter.get("in") == "json" for parameter in arguments.get("parameters", []))


# Whether a view reads a JSON body, by view function: what its decorators declared at import.
_json_views: dict[Callable[..., Any], bool] = {}


def _reads_json(view: Callable[..., Any] | None) -> bool:
    if view is None:
        return False
    known = _json_views.get(view)
    if known is None:
        known = _json_views[view] = _json_operation(view)
    return known


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                return level
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _has_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def _refuse_nul() -> errors.DomainError:
    # PostgreSQL text cannot hold U+0000: refused here, or the driver fails the query (a 500).
    return errors.ValidationFailed("The request contains a NUL character (U+0000).",
                                   details={"reason": "nul_character"})


def check_request_body() -> None:
    """Before each request: no NUL character in the path, query or form (PostgreSQL text cannot hold
    one), and a JSON operation gets JSON, or an error that says what is wrong."""
    req = request._get_current_object()  # the request itself, not one proxy look-up per attribute
    rule = req.url_rule
    if rule is None:
        return
    if _has_nul(req.view_args or {}) or (req.query_string and _has_nul(list(req.args.lists()))):
        raise _refuse_nul()
    if req.method not in BODY_METHODS:
        return
    mimetype = req.mimetype
    if not _reads_json(current_app.view_functions.get(rule.endpoint)):
        if mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            if _has_nul(list(req.form.lists())) or _has_nul([f.filename or "" for f in req.files.values()]):
                raise _refuse_nul()
        return
    # A JSON operation: its body is read as it came (parsing it as a form first would use it up, and
    # a JSON body sent as a form — plain ``curl -d`` — would pass as an empty one).
    raw = req.get_data(cache=True)
    if not raw:
        return  # the schema reports the missing fields
    if not req.is_json:
        raise errors.UnsupportedMediaType(
            "Send the body as JSON with Content-Type: application/json.",
            details={"content_type": mimetype or None, "expected": "application/json"})
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except RecursionError:
        parsed = None
        too_deep = True
    except (ValueError, UnicodeDecodeError):
        raise errors.ValidationFailed("The request body is not valid JSON.",
                                      details={"reason": "malformed_json"}) from None
    else:
        # Each array or object of the document opens with a ``[`` or ``{`` of the body: a body with
        # at most MAX_JSON_DEPTH of them cannot nest deeper, and need not be walked.
        containers = raw.count(b"[") + raw.count(b"{")
        too_deep = containers > MAX_JSON_DEPTH and _depth(parsed) > MAX_JSON_DEPTH
    if too_deep:
        raise errors.ValidationFailed("The JSON body is nested too deeply (at most {max} levels).",
                                      params={"max": MAX_JSON_DEPTH},
                                      details={"reason": "too_deep", "max_depth": MAX_JSON_DEPTH})
    # Strict JSON has no raw control character anywhere (the parse above refused one): a U+0000 in
    # the document can only come from the escape ``\u0000``, so a body without it has none.
    if _NUL_ESCAPE in raw and _has_nul(parsed):
        raise _refuse_nul()


# --- the document -----------------------------------------------------------------------------------


def error_statuses() -> dict[str, int]:
    """Every error code → its HTTP status."""
    statuses: dict[str, int] = {}
    pending: list[type[errors.DomainError]] = [errors.DomainError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        statuses.setdefault(cls.code, cls.status)
    statuses.update({"METHOD_NOT_ALLOWED": 405, "INTERNAL_ERROR": 500, "HTTP_ERROR": 400})
    return {code: statuses[code] for code in default_messages() if code in statuses}


def error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The error envelope of every error. `message` is in Simplified Chinese, or in "
                       "English when Accept-Language prefers it; `code` never changes with the language.",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "enum": sorted(default_messages())},
                "message": {"type": "string"},
                "details": {"type": "object", "additionalProperties": True},
            },
        }},
    }


def _codes_by_status(status: int) -> list[str]:
    return sorted(code for code, code_status in error_statuses().items()
                  if code_status == status and code not in HTTP_ONLY_MESSAGES)


def _operation_errors(endpoint: str, view: Any, method: str, has_path_params: bool,
                      has_inputs: bool, has_body: bool) -> dict[int, list[str]]:
    auth_kind = getattr(view, "api_auth", (None, ()))[0]
    known = OPERATION_CODES.get(endpoint, {})
    found: dict[int, list[str]] = {}
    if has_inputs or method in BODY_METHODS:
        found[400] = ["VALIDATION_ERROR"]
    if auth_kind in ("user", "staff", "signed_in"):
        found[401] = ["UNAUTHENTICATED"]
        found[403] = ["FORBIDDEN"]
    elif auth_kind == "institution":
        found[401] = ["SIGNATURE_INVALID", "TIMESTAMP_OUT_OF_WINDOW", "NONCE_REUSED"]
        found[403] = ["INSTITUTION_NOT_DESIGNATED"]
    if has_path_params or auth_kind is not None:
        found[404] = ["NOT_FOUND"]
    if method in BODY_METHODS:
        found[413] = ["PAYLOAD_TOO_LARGE"]
        if has_body:
            found[415] = ["UNSUPPORTED_MEDIA_TYPE"]
        if auth_kind is not None and has_body:
            for status in (409, 422):
                codes = known.get(status, _codes_by_status(status))
                if codes:
                    found[status] = list(codes)
    if getattr(view, "api_rate_limited", None):
        found[429] = ["RATE_LIMITED"]
    # Any operation: the database or Redis away answers 503 with Retry-After (app/errors_http.py).
    found[503] = ["UPSTREAM_UNAVAILABLE"]
    for status, codes in known.items():
        if codes:
            found[status] = sorted(set(found.get(status, [])) | set(codes))
    return found


def _error_response(status: int, codes: list[str]) -> dict[str, Any]:
    listed = ", ".join(f"`{code}`" for code in codes)
    return {
        "description": f"{_STATUS_TEXT.get(status, 'Error')}: {listed}.",
        "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"},
            "examples": {code: {"summary": message_for(code, "en"), "value": {"error": {
                "code": code, "message": message_for(code, "zh"), "details": {}}}} for code in codes},
        }},
    }


def _security(view: Any) -> tuple[list[dict[str, list[str]]], str | None]:
    auth = getattr(view, "api_auth", None)
    if auth is None:
        return [], None
    kind, roles = auth
    if kind == "institution":
        return [dict.fromkeys(INSTITUTION_SCHEMES, [])], CANONICAL_STRING
    if kind == "staff":
        who = f"staff ({', '.join(roles)})" if roles else "staff"
        return [{"bearer": []}], f"Needs a bearer token of {who}; a user token gets 403."
    if kind == "user":
        return [{"bearer": []}], "Needs a mini-program user's bearer token; a staff token gets 403."
    return [{"bearer": []}], "Needs a bearer token (a mini-program user or staff)."


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def finalize_document(document: dict[str, Any], app: Flask) -> dict[str, Any]:
    spec = copy.deepcopy(document)
    components = spec.setdefault("components", {})
    responses = components.get("responses", {})
    for name in ("DEFAULT_ERROR", "UNPROCESSABLE_ENTITY"):
        responses.pop(name, None)
    if not responses:
        components.pop("responses", None)
    schemas = components.setdefault("schemas", {})
    schemas[ERROR_SCHEMA] = error_schema()
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "An access token from /auth/wechat, /auth/alipay or /auth/refresh, or a staff "
                                  "token from `flask --app wsgi create-staff`."},
        **{scheme: {"type": "apiKey", "in": "header", "name": header, "description": CANONICAL_STRING}
           for scheme, header in zip(INSTITUTION_SCHEMES, INSTITUTION_HEADERS, strict=True)},
    }
    paths = spec.get("paths", {})
    located: dict[str, tuple[str, str, dict[str, Any]]] = {}
    domain = app.extensions.get("domain")
    current = domain.pledges.current() if domain is not None else None
    pledge = {"version": current.version, "sha256": current.sha256, "agreed": True} if current else _PLEDGE
    for rule in app.url_map.iter_rules():
        path = _openapi_path(rule.rule)
        operations = paths.get(path)
        if not operations:
            continue
        view = app.view_functions.get(rule.endpoint)
        for method in sorted(rule.methods or ()):
            operation = operations.get(method.lower())
            if operation is None:
                continue
            _finalize_operation(operation, rule.endpoint, view, method, bool(rule.arguments), pledge)
            located[rule.endpoint] = (path, method.lower(), operation)
    _add_links(located, schemas, paths)
    return spec


def _add_links(located: dict[str, tuple[str, str, dict[str, Any]]], schemas: dict[str, Any],
               paths: dict[str, Any]) -> None:
    """Put the ``LINKS`` into the document, each value where its target takes it now: a path or
    query parameter of that name, else a property of the target's JSON body (an operation may move a
    value from the URL to the body); a link whose target takes neither is left out, not left wrong."""
    for source, (status, links) in LINKS.items():
        if source not in located or status not in located[source][2]["responses"]:
            continue
        found = {}
        for name, (target, parameters, body) in links.items():
            if target not in located:
                continue
            path, method, operation = located[target]
            declared = [*paths[path].get("parameters", []), *operation.get("parameters", [])]
            names = {parameter["name"] for parameter in declared}
            fields = _body_properties(operation, schemas)
            values = {**parameters, **(body or {})}
            link: dict[str, Any] = {"operationRef": "#/paths/{}/{}".format(
                path.replace("~", "~0").replace("/", "~1"), method)}
            in_parameters = {key: value for key, value in values.items() if key in names}
            in_body = {key: value for key, value in values.items() if key not in names and key in fields}
            if len(in_parameters) + len(in_body) != len(values):
                continue
            if in_parameters:
                link["parameters"] = in_parameters
            if in_body:
                link["requestBody"] = in_body
            found[name] = link
        if found:
            located[source][2]["responses"][status]["links"] = found


def _body_properties(operation: dict[str, Any], schemas: dict[str, Any]) -> set[str]:
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    while "$ref" in schema:
        schema = schemas.get(schema["$ref"].rsplit("/", 1)[-1], {})
    return set(schema.get("properties", {}))


def _finalize_operation(operation: dict[str, Any], endpoint: str, view: Any, method: str,
                        has_path_params: bool, pledge: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    for name in ("default", "422"):
        responses.pop(name, None)
    responses.update(copy.deepcopy(NON_JSON_SUCCESS.get(endpoint, {})))
    has_inputs = bool(operation.get("parameters")) or "requestBody" in operation
    codes = _operation_errors(endpoint, view, method, has_path_params, has_inputs, "requestBody" in operation)
    for status, listed in sorted(codes.items()):
        responses[str(status)] = _error_response(status, listed)
    security, note = _security(view)
    operation["security"] = security
    lines = [operation.get("description", "").strip()] if operation.get("description") else []
    if note:
        lines.append(note)
    lines.append("Error codes: " + "; ".join(
        f"{status} " + ", ".join(f"`{code}`" for code in listed) for status, listed in sorted(codes.items())) + ".")
    operation["description"] = "\n\n".join(lines)
    example = copy.deepcopy(REQUEST_EXAMPLES.get(endpoint))
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if example is not None and body is not None:
        if "pledge" in example:
            example["pledge"] = pledge
        body["example"] = example


def init_app(app: Flask) -> None:
    """After the blueprints: the body check, and the finished document served at /api/openapi.json."""
    app.before_request(check_request_body)
    api = app.extensions["api"]
    build = api.spec.to_dict

    def to_dict() -> dict[str, Any]:
        return finalize_document(build(), app)

    api.spec.to_dict = to_dict
