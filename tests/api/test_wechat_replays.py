"""Issue 8, hole 6: a signed WeChat push query string cannot be replayed with another body.

Plain mode signs only (token, timestamp, nonce): before the fix, a query string seen once (a proxy
log) could carry any body within its window — a victim's deduction-notice consent was set to
``reject``, silencing the fraud alert of R15. Each (timestamp, nonce) is now used once (a repeat
with the same body is acknowledged and not applied again), in plain and in safe mode.
"""

from __future__ import annotations

import base64
import time

import pytest

from app.errors import UpstreamUnavailable
from notify.callbacks import PushNonces
from sandbox.push import build_event_push, change_event, popup_event
from tests.conftest import TEMPLATE_DEDUCTION, WECHAT_APPID
from tests.notify_helpers import NotifyWorld

CALLBACK = "/api/v1/callbacks/wechat"
TOKEN = "test-msg-token"
AES_KEY = base64.b64encode(bytes(range(32))).decode().rstrip("=")


def post(client, push, body=None):
    return client.post(CALLBACK, query_string=push.query, data=(push.body if body is None else body).encode(),
                       headers=push.headers)


def error_code(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()["error"]["code"]


def test_a_seen_plain_query_string_cannot_carry_another_body(app, client, sandbox):
    world = NotifyWorld(app, sandbox)
    owner = world.person("张伟")
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, count=2)
    seen = build_event_push(popup_event(owner.openid, {TEMPLATE_DEDUCTION: "accept"}), token=TOKEN)
    assert post(client, seen).status_code == 200  # the genuine push, logged by a proxy
    before = world.consent(owner, "wechat", TEMPLATE_DEDUCTION)

    forged = build_event_push(change_event(owner.openid, [TEMPLATE_DEDUCTION]), token="attacker-has-no-token")
    assert error_code(post(client, seen, forged.body), 401) == "NONCE_REUSED"
    assert world.consent(owner, "wechat", TEMPLATE_DEDUCTION) == before  # the fraud alert still goes out
    # WeChat repeating the genuine push is acknowledged, and not applied again.
    assert post(client, seen).status_code == 200
    assert world.consent(owner, "wechat", TEMPLATE_DEDUCTION) == before


def test_a_plain_push_outside_the_timestamp_window_is_refused(app, client, sandbox):
    owner = NotifyWorld(app, sandbox).person("张伟")
    old = build_event_push(popup_event(owner.openid, {TEMPLATE_DEDUCTION: "accept"}), token=TOKEN,
                           timestamp=int(time.time()) - 301)
    assert error_code(post(client, old), 401) == "SIGNATURE_INVALID"


def test_safe_mode_rejects_a_replayed_timestamp_and_nonce_too(make_app, sandbox):
    safe_app = make_app(WECHAT_AES_KEY=AES_KEY)
    with safe_app.app_context():
        world = NotifyWorld(safe_app, sandbox)
        owner = world.person("张伟")
        first = build_event_push(popup_event(owner.openid, {TEMPLATE_DEDUCTION: "accept"}), token=TOKEN,
                                 encoding_aes_key=AES_KEY, appid=WECHAT_APPID)
        client = safe_app.test_client()
        assert post(client, first).status_code == 200
        again = build_event_push(change_event(owner.openid, [TEMPLATE_DEDUCTION]), token=TOKEN,
                                 encoding_aes_key=AES_KEY, appid=WECHAT_APPID,
                                 timestamp=first.query["timestamp"], nonce=first.query["nonce"])
        assert error_code(post(client, again), 401) == "NONCE_REUSED"
        assert world.consent(owner, "wechat", TEMPLATE_DEDUCTION)["one_time_credits"] == 1


class _BrokenRedis:
    def set(self, *args, **kwargs):
        raise ConnectionError("redis is down")


def test_the_nonce_store_fails_closed(make_app, sandbox):
    other = make_app()
    other.extensions["redis"] = _BrokenRedis()
    with other.app_context():
        owner = NotifyWorld(other, sandbox).person("张伟")
        push = build_event_push(popup_event(owner.openid, {TEMPLATE_DEDUCTION: "accept"}), token=TOKEN)
        assert error_code(post(other.test_client(), push), 503) == "UPSTREAM_UNAVAILABLE"


def test_the_in_process_store_forgets_after_twice_the_window_and_refuses_when_full():
    now = [0.0]
    store = PushNonces(clock=lambda: now[0])
    assert store.claim(None, "1:a", "d1") == "new"
    assert store.claim(None, "1:a", "d1") == "repeat"
    assert store.claim(None, "1:a", "d2") == "conflict"
    now[0] = 601
    assert store.claim(None, "1:a", "d2") == "new"
    store.MAX_IN_PROCESS = 2
    assert store.claim(None, "2:b", "d") == "new"
    with pytest.raises(UpstreamUnavailable):  # a full store refuses rather than forgets
        store.claim(None, "3:c", "d")
