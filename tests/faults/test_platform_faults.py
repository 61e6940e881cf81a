"""Fault (e): the WeChat and Alipay platforms answer 5xx, time out, send malformed or wrongly signed
bodies → never a 500: sign-in answers 503 ``UPSTREAM_UNAVAILABLE``, and a notice whose push failed
that way is retried later (R15) and pushed exactly once when the platform is back.

5xx, timeouts and outages come from the emulator's fault switches; malformed bodies from a small
local server that answers garbage; wrong signatures from an app that trusts another Alipay key.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import TEMPLATE_DEDUCTION
from tests.helpers import random_openid
from tests.notify_helpers import FakeClock, NotifyWorld

GARBAGE = {
    "html": (200, "text/html", b"<html><body>502 Bad Gateway</body></html>"),
    "truncated_json": (200, "application/json", b'{"openid": "o123", "session_'),
    "json_without_fields": (200, "application/json", b'{"hello": "world"}'),
    "json_list": (200, "application/json", b"[1, 2, 3]"),
    "empty": (200, "application/json", b""),
    "binary": (200, "application/octet-stream", bytes(range(256))),
    "huge_number": (200, "application/json", b'{"openid": 1e999999, "session_key": null}'),
    # Well-formed JSON whose fields have the wrong type or size: every field is checked, not only
    # whether it is there (an openid that is an object, a number or 10 000 characters long).
    "openid_an_object": (200, "application/json", b'{"openid": {"o": 1}, "session_key": "a2V5"}'),
    "openid_a_number": (200, "application/json", b'{"openid": 12345, "session_key": "a2V5"}'),
    "openid_too_long": (200, "application/json", b'{"openid": "' + b"o" * 10000 + b'", "session_key": "a2V5"}'),
    "session_key_a_list": (200, "application/json", b'{"openid": "o-garbage", "session_key": ["k"]}'),
    "unionid_an_object": (200, "application/json",
                          b'{"openid": "o-garbage2", "session_key": "a2V5", "unionid": {"u": 1}}'),
}


@pytest.fixture(scope="module")
def garbage_server() -> Iterator[dict]:
    """Answers every request with the body named by ``state['kind']``."""
    state = {"kind": "html", "calls": 0}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            state["calls"] += 1
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            status, content_type, body = GARBAGE[state["kind"]]
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # noqa: N815

        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def _unavailable(response) -> None:
    assert response.status_code == 503, (response.status_code, response.get_data(as_text=True)[:300])
    assert response.get_json()["error"]["code"] == "UPSTREAM_UNAVAILABLE"
    assert int(response.headers["Retry-After"]) > 0


def _wechat_sign_in(client, sandbox):
    code = sandbox.issue_wechat_login_code(random_openid())
    return client.post("/api/v1/auth/wechat", json={"code": code})


def _alipay_sign_in(client, sandbox):
    code = sandbox.issue_alipay_auth_code(user_id="2088000000000001")
    return client.post("/api/v1/auth/alipay", json={"auth_code": code})


@pytest.mark.parametrize("fault", [{"http_status": 500}, {"http_status": 502}, {"http_status": 503},
                                   {"errcode": -1}, {"errcode": 40013}])
def test_wechat_sign_in_with_a_failing_platform_is_503(app, client, sandbox, fault):
    sandbox.inject_fault("wechat.jscode2session", **fault)
    _unavailable(_wechat_sign_in(client, sandbox))
    assert _wechat_sign_in(client, sandbox).status_code == 200  # the fault was one call; it heals


@pytest.mark.parametrize("fault", [{"http_status": 500}, {"http_status": 504}, {"errcode": "20000"}])
def test_alipay_sign_in_with_a_failing_platform_is_503(app, client, sandbox, fault):
    sandbox.inject_fault("alipay.system.oauth.token", **fault)
    _unavailable(_alipay_sign_in(client, sandbox))
    assert _alipay_sign_in(client, sandbox).status_code == 200


@pytest.mark.parametrize("platform", ["wechat", "alipay"])
def test_sign_in_while_a_platform_is_down_or_slow_is_503(make_app, sandbox, platform):
    client = make_app(PLATFORM_TIMEOUT_SECONDS=0.3).test_client()
    sign_in = _wechat_sign_in if platform == "wechat" else _alipay_sign_in
    sandbox.set_down(platform)
    try:
        _unavailable(sign_in(client, sandbox))
    finally:
        sandbox.set_down(platform, False)
    api = "wechat.jscode2session" if platform == "wechat" else "alipay.system.oauth.token"
    sandbox.inject_fault(api, delay=1.0)  # longer than the timeout
    _unavailable(sign_in(client, sandbox))


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_malformed_platform_replies_are_503_never_500(make_app, sandbox, garbage_server, kind):
    garbage_server["kind"] = kind
    app = make_app(WECHAT_API_BASE_URL=garbage_server["url"] + "/", ALIPAY_GATEWAY_URL=garbage_server["url"] + "/gw")
    client = app.test_client()
    calls = garbage_server["calls"]
    _unavailable(client.post("/api/v1/auth/wechat", json={"code": "061abcDEF"}))
    _unavailable(client.post("/api/v1/auth/alipay", json={"auth_code": "4b203fe6c11548bcabd8da5bb087a83b"}))
    assert garbage_server["calls"] >= calls + 2


def test_alipay_replies_with_a_wrong_signature_are_503(make_app, sandbox):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    client = make_app(ALIPAY_PUBLIC_KEY=other).test_client()  # the emulator's replies do not verify
    _unavailable(_alipay_sign_in(client, sandbox))


@pytest.mark.parametrize("fault", [{"http_status": 500}, {"http_status": 502}, {"delay": 2.5}, {"errcode": -1},
                                   {"errcode": 45009}])
def test_a_notice_whose_push_fails_is_retried_later_and_pushed_once_R15(app, sandbox, fault):
    clock = FakeClock()
    world = NotifyWorld(app, sandbox, clock)
    deliverer = app.extensions["domain"].notifier.deliverer
    original, deliverer.clock = deliverer.clock, clock
    try:
        owner, child = world.person("张伟"), world.person("张小明")
        world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, mode="long_term")
        sandbox.inject_fault("wechat.subscribe_send", **fault)
        (delivery_id,) = world.settle(child, [(owner, "copay", 1234)]).delivery_ids
        deliverer.deliver(delivery_id)
        first = world.delivery(delivery_id)
        assert first.state == "pending" and first.attempts == 1, (first.state, first.last_error_code)
        assert first.next_attempt_at > clock.now  # R15: not at once, but after a back-off
        clock.now = first.next_attempt_at
        assert deliverer.deliver(delivery_id).state == "sent"
        assert deliverer.deliver(delivery_id).state == "skipped"  # sent once; a second run does nothing
        pushed = len(sandbox.sent_messages(to=owner.openid))
        if fault.get("delay"):
            # A timed-out send may still reach the platform after we gave up on it: R15's retry can
            # then show the message twice (WeChat's sent event reconciles it; docs/RELIABILITY.md).
            assert pushed in (1, 2)
        else:
            assert pushed == 1
    finally:
        deliverer.clock = original


def test_garbage_from_the_push_api_is_retried_not_a_crash(make_app, sandbox, garbage_server):
    garbage_server["kind"] = "truncated_json"
    app = make_app(WECHAT_API_BASE_URL=garbage_server["url"] + "/")
    with app.app_context():
        world = NotifyWorld(app, sandbox)
        owner, child = world.person("张伟"), world.person("张小明")
        world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, mode="long_term")
        (delivery_id,) = world.settle(child, [(owner, "copay", 99)]).delivery_ids
        outcome = app.extensions["domain"].notifier.deliverer.deliver(delivery_id)
        row = world.delivery(delivery_id)
    assert outcome.state == "pending" and row.state == "pending", (row.state, row.last_error_code)
    assert json.dumps(row.last_error_code)


def _alipay_answers(app, monkeypatch, method: str, **fields):
    """The app's Alipay gateway gets ``method``'s verified reply with ``fields`` replaced: a signed
    reply whose fields are garbage (the emulator itself always answers well-formed ones)."""
    gateway = app.extensions["domain"].alipay
    original = gateway._call

    def call(name, biz_content=None, **params):
        reply = original(name, biz_content, **params)
        return {**reply, **fields} if name == method else reply

    monkeypatch.setattr(gateway, "_call", call)


@pytest.mark.parametrize("fields", [{"user_id": 2088000000000001}, {"user_id": "2088" + "0" * 500},
                                    {"user_id": None, "open_id": {"o": 1}}, {"user_id": ["2088000000000001"]},
                                    {"union_id": {"u": 1}}])
def test_an_alipay_sign_in_whose_ids_are_garbage_is_503(app, client, sandbox, monkeypatch, fields):
    _alipay_answers(app, monkeypatch, "alipay.system.oauth.token", **fields)
    _unavailable(_alipay_sign_in(client, sandbox))


@pytest.mark.parametrize("fields", [{"cert_no": 53262119800101123}, {"user_name": ["张伟"]},
                                    {"cert_no": {"n": "53262119800101123X"}}, {"user_name": 7},
                                    {"user_id": {"u": 1}}, {"is_certified": ["T"]}])
def test_an_alipay_certification_whose_fields_are_garbage_links_nobody(app, client, sandbox, demo, monkeypatch,
                                                                      fields):
    from app.demo import OWNER
    from tests.helpers import bearer, sign_in_alipay

    user_id = "2088000000009101"
    token = sign_in_alipay(client, sandbox, user_id)["access_token"]
    sandbox.set_alipay_identity(user_id, "张伟", OWNER)
    _alipay_answers(app, monkeypatch, "alipay.user.info.share", **fields)
    code = sandbox.issue_alipay_auth_code(user_id=user_id)
    response = client.post("/api/v1/me/identity", headers=bearer(token),
                           json={"name": "张伟", "id_number": OWNER, "proof": {"alipay_auth_code": code}})
    _unavailable(response)
    assert client.get("/api/v1/me", headers=bearer(token)).get_json()["user"]["verified"] is False


def test_a_malformed_code2session_reply_is_logged_without_its_session_key(make_app, garbage_server, caplog):
    """The log names what was wrong with the reply, never the secret session key it carried."""
    garbage_server["kind"] = "unionid_an_object"
    client = make_app(WECHAT_API_BASE_URL=garbage_server["url"] + "/").test_client()
    with caplog.at_level("INFO"):
        _unavailable(client.post("/api/v1/auth/wechat", json={"code": "061abcDEF"}))
    assert "a2V5" not in caplog.text and "o-garbage2" not in caplog.text
    assert "code2Session" in caplog.text
