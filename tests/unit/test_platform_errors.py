"""How platform failures are classified for the notify worker."""

from __future__ import annotations

import pytest

from app.platforms import PERMANENT, TOKEN, TRANSIENT, PlatformError, classify, is_loopback_url


@pytest.mark.parametrize("code", ["-1", "45009", "45011", "timeout", "network", "http_5xx", "bad_response"])
def test_busy_quota_and_transport_failures_of_wechat_are_transient(code):
    assert PlatformError("wechat", code).kind == TRANSIENT


@pytest.mark.parametrize("code", ["40001", "40014", "42001"])
def test_wechat_token_errors_are_token_errors(code):
    assert PlatformError("wechat", code).kind == TOKEN


@pytest.mark.parametrize("code", ["43101", "40003", "47003", "40037", "41030", "40125", "http_4xx", "99999"])
def test_other_wechat_errors_are_permanent(code):
    assert PlatformError("wechat", code).kind == PERMANENT


@pytest.mark.parametrize("code", ["isp.unknow-error", "20000", "timeout", "network", "http_5xx"])
def test_alipay_service_and_transport_failures_are_transient(code):
    assert classify("alipay", code) == TRANSIENT


@pytest.mark.parametrize(
    "code", ["USER_TEMPLATE_ILLEGAL", "USER_KEYWORD_LENGTH_ERROR", "isv.invalid-signature", "40004", "aop.x"]
)
def test_alipay_business_failures_are_permanent(code):
    assert classify("alipay", code) == PERMANENT


def test_an_explicit_kind_wins_and_the_error_reads_well():
    err = PlatformError("wechat", -1, "system error", kind=PERMANENT)

    assert (err.platform, err.code, err.message, err.kind) == ("wechat", "-1", "system error", PERMANENT)
    assert not err.transient
    assert str(err) == "wechat -1: system error"


def test_an_unknown_platform_is_a_programming_error():
    with pytest.raises(ValueError):
        PlatformError("qq", "1")


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8001/", True),
        ("http://localhost/gateway.do", True),
        ("http://[::1]:80/", True),
        ("https://api.weixin.qq.com/", False),
        ("https://openapi.alipay.com/gateway.do", False),
    ],
)
def test_loopback_urls_are_recognised(url, loopback):
    assert is_loopback_url(url) is loopback


@pytest.mark.parametrize("reply", [
    {"errcode": "０", "access_token": "t", "expires_in": 7200},     # int("０") == 0
    {"errcode": 0.5, "access_token": "t", "expires_in": 7200},      # int(0.5) == 0
    {"errcode": True, "access_token": "t", "expires_in": 7200},
    {"access_token": "t", "expires_in": "７２００"},                  # int("７２００") == 7200
    {"access_token": "t", "expires_in": 7200.9},
    {"access_token": "t", "expires_in": "7200"},
])
def test_a_stable_token_reply_whose_numbers_are_not_json_integers_is_malformed(reply):
    """errcode and expires_in are JSON integers; int() would read "０", 0.5, True, "７２００" as
    numbers and take a garbled reply for a token (ValueError is how a malformed reply is reported)."""
    import json

    import requests

    from app.platforms.wechat import TTLMemoryStorage, _StableTokenClient

    class Http:
        trust_env = True

        def post(self, url, **kwargs):
            response = requests.Response()
            response.status_code, response._content = 200, json.dumps(reply).encode()
            response.headers["Content-Type"] = "application/json"
            response.request = requests.Request("POST", url).prepare()
            return response

    client = _StableTokenClient("wxappid", "secret", "https://api.example/", TTLMemoryStorage(), 5.0)
    client._http = Http()
    with pytest.raises(ValueError):
        client.fetch_access_token()
