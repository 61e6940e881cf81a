"""``GET|POST /api/v1/callbacks/wechat``: WeChat's message push, plain and safe mode (SPEC §5, R15)."""

from __future__ import annotations

import base64
import json
import secrets
import time

import pytest

from sandbox.push import build_event_push, change_event, popup_event, url_verification
from tests.conftest import TEMPLATE_DEDUCTION, TEMPLATE_RECEIPT, WECHAT_APPID
from tests.notify_helpers import NotifyWorld

CALLBACK = "/api/v1/callbacks/wechat"
TOKEN = "test-msg-token"
AES_KEY = base64.b64encode(bytes(range(32))).decode().rstrip("=")


@pytest.fixture
def world(app, sandbox):
    return NotifyWorld(app, sandbox)


@pytest.fixture
def safe_app(make_app):
    return make_app(WECHAT_AES_KEY=AES_KEY)


def post(client, push):
    return client.post(push.url(CALLBACK), data=push.body.encode(), headers=push.headers)


def credits(world, party, template_id=TEMPLATE_DEDUCTION):
    return world.consent(party, "wechat", template_id)["one_time_credits"]


def assert_401(response):
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "SIGNATURE_INVALID"


# --- URL verification ------------------------------------------------------------------------------


def test_the_url_check_echoes_echostr_when_the_signature_matches(client):
    check = url_verification(TOKEN, echostr="hello-wechat")

    response = client.get(check.url(CALLBACK))

    assert response.status_code == 200
    assert response.get_data(as_text=True) == "hello-wechat"


def test_the_url_check_with_a_wrong_signature_is_401(client):
    check = url_verification("not-our-token", echostr="hello-wechat")

    response = client.get(check.url(CALLBACK))

    assert_401(response)
    assert "hello-wechat" not in response.get_data(as_text=True)


def test_a_stale_timestamp_is_401_even_with_a_right_signature(client):
    check = url_verification(TOKEN, timestamp=int(time.time()) - 3600)

    assert_401(client.get(check.url(CALLBACK)))


@pytest.mark.parametrize("written", [
    lambda t: str(t).translate(str.maketrans("0123456789", "０１２３４５６７８９")),  # int() takes these
    lambda t: f"{str(t)[:4]}_{str(t)[4:]}", lambda t: f" {t}", lambda t: f"+{t}"])
def test_a_timestamp_not_written_in_plain_ascii_digits_is_401_even_when_signed(client, written):
    """WeChat sends unix time as ASCII digits; int() also reads "１７…", "17_00…", " 17…" and "+17…".
    (The signature covers the timestamp as written, so this is input hygiene, not a replay.)"""
    check = url_verification(TOKEN, timestamp=written(int(time.time())))

    assert_401(client.get(check.url(CALLBACK)))


# --- plain mode ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["xml", "json"])
def test_a_popup_accept_pushed_in_plain_mode_adds_a_one_time_credit_R15(client, world, fmt):
    owner = world.person("张伟")

    response = post(client, build_event_push(popup_event(owner.openid, {TEMPLATE_DEDUCTION: "accept"}),
                                             token=TOKEN, fmt=fmt))

    assert response.status_code == 200
    assert response.get_data(as_text=True) == "success"
    assert credits(world, owner) == 1


def test_json_pushes_with_a_wrapper_and_several_items_are_read(client, world):
    owner = world.person("张伟")
    event = popup_event(owner.openid, {TEMPLATE_DEDUCTION: "accept", TEMPLATE_RECEIPT: "accept"})

    post(client, build_event_push(event, token=TOKEN, fmt="json", wrapped=True, create_time_as_str=False))

    assert credits(world, owner) == 1
    assert credits(world, owner, TEMPLATE_RECEIPT) == 1


def test_a_push_wechat_repeats_counts_once(client, world):
    owner = world.person("张伟")
    push = build_event_push(popup_event(owner.openid, {TEMPLATE_DEDUCTION: "accept"}, create_time=1700000000),
                            token=TOKEN)

    for _ in range(3):
        assert post(client, push).status_code == 200

    assert credits(world, owner) == 1


def test_a_plain_push_with_a_wrong_signature_is_401_and_changes_nothing(client, world):
    owner = world.person("张伟")
    push = build_event_push(popup_event(owner.openid, {TEMPLATE_DEDUCTION: "accept"}), token="wrong-token")

    assert_401(post(client, push))
    assert credits(world, owner) == 0


def test_switching_a_template_off_in_settings_stops_every_push_R15(client, world):
    owner = world.person("张伟")
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, count=3)

    post(client, build_event_push(change_event(owner.openid, [TEMPLATE_DEDUCTION]), token=TOKEN))

    assert world.consent(owner, "wechat", TEMPLATE_DEDUCTION) == {
        "template_id": TEMPLATE_DEDUCTION, "one_time_credits": 0, "long_term": "reject"}


def test_an_event_for_an_openid_we_do_not_know_is_acknowledged_and_ignored(client):
    push = build_event_push(popup_event("o-nobody-we-know", {TEMPLATE_DEDUCTION: "accept"}), token=TOKEN)

    response = post(client, push)

    assert response.status_code == 200 and response.get_data(as_text=True) == "success"


def test_a_body_that_is_neither_xml_nor_json_is_400(client):
    push = build_event_push(popup_event("o-x", {TEMPLATE_DEDUCTION: "accept"}), token=TOKEN)

    response = client.post(push.url(CALLBACK), data=b"not a push", headers=push.headers)

    assert response.status_code == 400


# --- safe mode (AES) ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["xml", "json"])
def test_an_encrypted_push_is_decrypted_and_applied_R15(safe_app, sandbox, fmt):
    with safe_app.app_context():
        world = NotifyWorld(safe_app, sandbox)
        owner = world.person("张伟")
        push = build_event_push(popup_event(owner.openid, {TEMPLATE_DEDUCTION: "accept"}), token=TOKEN, fmt=fmt,
                                encoding_aes_key=AES_KEY, appid=WECHAT_APPID)

        response = post(safe_app.test_client(), push)

        assert response.status_code == 200
        assert credits(world, owner) == 1


def test_an_encrypted_push_with_a_wrong_msg_signature_is_401(safe_app, sandbox):
    with safe_app.app_context():
        owner = NotifyWorld(safe_app, sandbox).person("张伟")
        push = build_event_push(popup_event(owner.openid, {TEMPLATE_DEDUCTION: "accept"}), token=TOKEN,
                                encoding_aes_key=AES_KEY, appid=WECHAT_APPID)
        forged = dict(push.query, msg_signature="0" * 40)

        response = safe_app.test_client().post(CALLBACK, query_string=forged, data=push.body.encode(),
                                               headers=push.headers)

        assert_401(response)


def test_an_encrypted_push_for_another_mini_program_is_401(safe_app, sandbox):
    with safe_app.app_context():
        owner = NotifyWorld(safe_app, sandbox).person("张伟")
        push = build_event_push(popup_event(owner.openid, {TEMPLATE_DEDUCTION: "accept"}), token=TOKEN,
                                encoding_aes_key=AES_KEY, appid="wx-someone-else")

        assert_401(post(safe_app.test_client(), push))


def test_with_an_aes_key_configured_a_plain_push_is_refused(safe_app, sandbox):
    with safe_app.app_context():
        owner = NotifyWorld(safe_app, sandbox).person("张伟")
        # Plain mode signs only token, timestamp and nonce: anyone who saw one push could forge a body.
        push = build_event_push(popup_event(owner.openid, {TEMPLATE_DEDUCTION: "accept"}), token=TOKEN)

        assert_401(post(safe_app.test_client(), push))


def test_an_encrypted_body_swapped_under_a_valid_signature_is_401(safe_app, sandbox):
    with safe_app.app_context():
        owner = NotifyWorld(safe_app, sandbox).person("张伟")
        signed = build_event_push(popup_event(owner.openid, {TEMPLATE_DEDUCTION: "reject"}), token=TOKEN,
                                  fmt="json", encoding_aes_key=AES_KEY, appid=WECHAT_APPID)
        other = build_event_push(popup_event(owner.openid, {TEMPLATE_DEDUCTION: "accept"}), token=TOKEN,
                                 fmt="json", encoding_aes_key=AES_KEY, appid=WECHAT_APPID, nonce=secrets.token_hex(4))

        response = safe_app.test_client().post(CALLBACK, query_string=signed.query, data=other.body.encode(),
                                               headers=signed.headers)

        assert_401(response)
        assert json.loads(other.body)["Encrypt"] != json.loads(signed.body)["Encrypt"]

