"""The request envelope (app/envelope.py and the hooks): the same answers as the library code they
shorten, with the per-request work gone (issue 13)."""

from __future__ import annotations

import json
import logging

import marshmallow as ma
import pytest
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st

from app import contract, envelope
from app.logs import JsonFormatter, _masked
from app.security.pii import mask_text
from tests.helpers import bearer

# --- schemas of @bp.arguments ------------------------------------------------------------------------


def _parsers_of(view):
    """The webargs parsers whose ``use_args`` wrapped ``view`` (found in the wrappers' closures)."""
    found, seen, pending = [], set(), [view]
    while pending:
        fn = pending.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            if isinstance(value, envelope.FlaskParser):
                found.append(value)
            elif callable(value):
                pending.append(value)
        pending.append(getattr(fn, "__wrapped__", None))
    return found


def test_every_view_with_arguments_parses_with_the_schema_once_parser(app):
    checked = 0
    for endpoint, view in app.view_functions.items():
        if "arguments" not in getattr(view, "_apidoc", {}):
            continue
        parsers = _parsers_of(view)
        assert parsers, f"{endpoint}: no webargs parser found"
        assert all(isinstance(p, envelope.SchemaOnceParser) for p in parsers), endpoint
        checked += 1
    assert checked >= 30


def test_a_schema_class_is_instantiated_once_across_requests(app, client, monkeypatch):
    from miniprogram_api.auth import WeChatLoginSchema

    made = []
    original = WeChatLoginSchema.__init__

    def counting(self, *args, **kwargs):
        made.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(WeChatLoginSchema, "__init__", counting)
    for _ in range(3):  # a missing field: parsed, refused by the schema, before any platform call
        response = client.post("/api/v1/auth/wechat", json={})
        assert response.status_code == 400
        assert "code" in response.get_json()["error"]["details"]["fields"]["json"]
    assert len(made) <= 1


def test_the_parser_still_builds_schemas_from_dicts_and_instances():
    parser = envelope.SchemaOnceParser()

    class One(ma.Schema):
        n = ma.fields.Integer()

    instance = One()
    assert parser._get_schema(instance, None) is instance
    assert parser._get_schema(One, None) is parser._get_schema(One, None)
    assert set(parser._get_schema({"n": ma.fields.Integer()}, None).fields) == {"n"}


# --- ensure_sync and sessions ------------------------------------------------------------------------


def test_ensure_sync_returns_plain_functions_as_they_are_and_still_wraps_coroutines():
    app = envelope.ServiceFlask(__name__)

    def plain():
        return 1

    async def coroutine():  # never called here: only what ensure_sync makes of it
        return 2

    assert app.ensure_sync(plain) is plain and app.ensure_sync(plain) is plain
    assert plain in app._plain_functions
    try:
        Flask(__name__).ensure_sync(coroutine)
    except RuntimeError:  # Flask without its async extra: the same refusal
        with pytest.raises(RuntimeError):
            app.ensure_sync(coroutine)
    else:
        assert app.ensure_sync(coroutine) is not coroutine
    assert coroutine not in app._plain_functions


def test_an_api_request_without_cookies_gets_no_session_cookie_and_no_vary(client):
    response = client.get("/healthz")
    assert "Set-Cookie" not in response.headers
    assert "Cookie" not in response.headers.get("Vary", "")


def test_a_session_cookie_is_still_read_and_written(app):
    assert isinstance(app.session_interface, envelope.CookieSessions)
    client = app.test_client()
    with client.session_transaction() as session:
        session["probe"] = "kept"
    with client.session_transaction() as session:
        assert session["probe"] == "kept"
    with client.session_transaction() as session:
        session.clear()
    with client.session_transaction() as session:
        assert "probe" not in session


# --- request bodies ----------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet=st.characters(max_codepoint=0x2FF)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.text(alphabet=st.characters(max_codepoint=0x2FF), max_size=4), children, max_size=4),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(_json, st.booleans())
def test_the_byte_shortcuts_of_the_body_check_never_miss(document, ascii_only):
    raw = json.dumps(document, ensure_ascii=ascii_only).encode()
    parsed = json.loads(raw.decode())
    if contract._has_nul(parsed):
        assert contract._NUL_ESCAPE in raw
    assert contract._depth(parsed) <= raw.count(b"[") + raw.count(b"{")


@pytest.mark.parametrize("depth", [32, 33])
def test_nesting_at_the_limit_is_accepted_and_one_more_refused(client, depth):
    body = '{"code": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
    response = client.post("/api/v1/auth/wechat", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    reason = response.get_json()["error"]["details"].get("reason")
    assert (reason == "too_deep") == (depth > contract.MAX_JSON_DEPTH)


def test_a_nul_escape_in_the_body_is_refused_and_a_quoted_backslash_is_not(client):
    refused = client.post("/api/v1/auth/wechat", data=b'{"code": "a\\u0000b"}',
                          headers={"Content-Type": "application/json"})
    assert refused.status_code == 400
    assert refused.get_json()["error"]["details"] == {"reason": "nul_character"}
    quoted = client.post("/api/v1/auth/wechat", data=b'{"cod": "a\\\\u0000b"}',
                         headers={"Content-Type": "application/json"})
    assert quoted.status_code == 400
    assert "fields" in quoted.get_json()["error"]["details"]  # the schema's answer, not the NUL check


# --- headers, log, metrics ---------------------------------------------------------------------------


def test_security_headers_once_each_and_a_view_s_own_policy_kept(client):
    response = client.get("/healthz")
    for name, value in (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                        ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
                        ("Referrer-Policy", "no-referrer"), ("Cross-Origin-Resource-Policy", "same-origin")):
        assert response.headers.getlist(name) == [value]
    docs = client.get("/api/docs")
    if docs.status_code == 200:
        assert len(docs.headers.getlist("Content-Security-Policy")) == 1


def test_the_request_log_line_has_every_field(client, caplog):
    caplog.set_level(logging.INFO, logger="app.request")
    response = client.get("/api/v1/me", headers=bearer("at_nonsense") | {"X-Request-Id": "abc123"})
    assert response.status_code == 401 and response.headers["X-Request-Id"] == "abc123"
    [record] = [r for r in caplog.records if r.name == "app.request"]
    fields = dict(record.fields)
    assert isinstance(fields.pop("latency_ms"), float)
    assert fields == {"request_id": "abc123", "method": "GET", "route": "/api/v1/me", "status": 401,
                      "actor": None, "error_code": "UNAUTHENTICATED"}
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "abc123" and line["error_code"] == "UNAUTHENTICATED"


def test_no_request_log_record_when_info_is_off(client, caplog):
    caplog.set_level(logging.WARNING, logger="app.request")
    response = client.get("/healthz", headers={"X-Request-Id": "abc124"})
    assert response.headers["X-Request-Id"] == "abc124"
    assert not [r for r in caplog.records if r.name == "app.request"]


def test_a_request_id_is_made_when_none_or_a_bad_one_is_sent(client):
    for sent in (None, "not allowed!", "x" * 65):
        response = client.get("/healthz", headers={"X-Request-Id": sent} if sent else {})
        made = response.headers["X-Request-Id"]
        assert made != sent and len(made) == 16 and made.isalnum()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789Xx -:/abc١٢٣+　－", max_size=40))
def test_the_log_masks_exactly_what_mask_text_masks(text):
    assert _masked(text) == mask_text(text)


@pytest.mark.parametrize("text", ["tel 138 1234 5678", "id 532601-19900101-1234", "tel +86 138-1234-5678",
                                  "证件５３２６　０１１９　９００１　０１１　２３４"])
def test_a_number_typed_in_groups_is_masked_in_the_log_too(text):
    assert _masked(text) == mask_text(text) != text


def test_request_metrics_count_through_the_cached_children(client):
    from app import metrics
    from tests.api.test_metrics import scrape, value

    labels = {"route": "/probe/<x>", "method": "OTHER", "status": "418"}
    before = scrape(client)
    metrics.observe_request("/probe/<x>", "BREW", 418, 0.001)
    metrics.observe_request("/probe/<x>", "PURGE", 418, 0.002)
    after = scrape(client)
    assert value(after, "copay_http_requests_total", **labels) == value(before, "copay_http_requests_total",
                                                                         **labels) + 2
    count = {"route": "/probe/<x>", "method": "OTHER"}
    assert value(after, "copay_http_request_duration_seconds_count", **count) == value(
        before, "copay_http_request_duration_seconds_count", **count) + 2
    assert ("/probe/<x>", "OTHER", 418) in metrics._request_children
