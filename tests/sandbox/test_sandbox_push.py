"""WeChat message-push builders round-trip through wechatpy, and a Sandbox delivers pushes."""

from __future__ import annotations

import json
import threading

import pytest
import xmltodict
from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException
from wechatpy.utils import check_signature
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from app.platforms.wechat import WeChatGateway
from sandbox.push import (
    build_event_push,
    change_event,
    popup_event,
    render_json,
    render_xml,
    sent_event,
    url_verification,
)

TOKEN = "pushToken123"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APPID = "wx0123456789abcdef"


def test_the_url_check_matches_the_official_example_vector():
    request = url_verification("AAAAA", echostr="echo", timestamp="1714036504", nonce="1514711492")

    assert request.method == "GET"
    assert request.query["signature"] == "f464b24fc39322e44b38aa78f5edd27bd1441696"
    check_signature("AAAAA", request.query["signature"], request.query["timestamp"], request.query["nonce"])


def test_a_url_check_with_another_token_fails_the_signature():
    q = url_verification("right").query
    with pytest.raises(InvalidSignatureException):
        check_signature("wrong", q["signature"], q["timestamp"], q["nonce"])


def test_plain_xml_has_one_list_element_per_template():
    one = xmltodict.parse(render_xml(popup_event("oUser", {"T1": "accept"})))["xml"]
    two = xmltodict.parse(render_xml(popup_event("oUser", {"T1": "accept", "T2": "reject"})))["xml"]

    assert one["SubscribeMsgPopupEvent"]["List"] == {
        "TemplateId": "T1",
        "SubscribeStatusString": "accept",
        "PopupScene": "0",
    }
    assert [i["SubscribeStatusString"] for i in two["SubscribeMsgPopupEvent"]["List"]] == ["accept", "reject"]


def test_plain_xml_is_read_by_wechatpy_as_an_unknown_event_from_the_user():
    message = parse_message(render_xml(sent_event("oUser", [("T1", "1800000000000000001")])))

    assert message.type == "unknown"
    assert message.source == "oUser"
    assert message._data["Event"] == "subscribe_msg_sent_event"
    assert message._data["SubscribeMsgSentEvent"]["List"]["MsgID"] == "1800000000000000001"


def test_json_list_is_an_object_for_one_item_and_an_array_for_several():
    one = json.loads(render_json(change_event("oUser", ["T1"])))
    several = json.loads(render_json(change_event("oUser", ["T1", "T2"]), create_time_as_str=False))
    wrapped = json.loads(render_json(sent_event("oUser", [("T1", "42")]), wrapped=True))

    assert one["List"] == {"TemplateId": "T1", "SubscribeStatusString": "reject"}
    assert isinstance(one["CreateTime"], str)
    assert [item["TemplateId"] for item in several["List"]] == ["T1", "T2"]
    assert isinstance(several["CreateTime"], int)
    assert "List" not in wrapped and wrapped["SubscribeMsgSentEvent"]["List"]["MsgID"] == "42"


def test_a_plain_post_is_signed_with_the_token():
    request = build_event_push(popup_event("oUser", {"T1": "accept"}), token=TOKEN, fmt="json")

    check_signature(TOKEN, request.query["signature"], request.query["timestamp"], request.query["nonce"])
    assert "encrypt_type" not in request.query
    assert json.loads(request.body)["Event"] == "subscribe_msg_popup_event"


@pytest.mark.parametrize("fmt", ["xml", "json"])
def test_a_safe_mode_post_decrypts_with_wechatpy_to_the_plain_body(fmt):
    event = sent_event("oUser", [("T1", "1800000000000000001"), ("T2", "1800000000000000002")])
    request = build_event_push(event, token=TOKEN, fmt=fmt, encoding_aes_key=AES_KEY, appid=APPID)
    q = request.query
    body = request.body if fmt == "xml" else json.loads(request.body)

    plain = WeChatCrypto(TOKEN, AES_KEY, APPID).decrypt_message(
        body, q["msg_signature"], q["timestamp"], q["nonce"]
    )

    assert q["encrypt_type"] == "aes"
    check_signature(TOKEN, q["signature"], q["timestamp"], q["nonce"])
    expected = render_xml(event) if fmt == "xml" else render_json(event)
    assert plain == expected


def test_a_safe_mode_post_for_another_appid_is_rejected():
    request = build_event_push(
        popup_event("o", {"T1": "accept"}), token=TOKEN, encoding_aes_key=AES_KEY, appid="wxSomeoneElse"
    )
    q = request.query

    with pytest.raises(InvalidAppIdException):
        WeChatCrypto(TOKEN, AES_KEY, APPID).decrypt_message(
            request.body, q["msg_signature"], q["timestamp"], q["nonce"]
        )


def test_a_tampered_safe_mode_body_fails_the_message_signature():
    request = build_event_push(
        popup_event("o", {"T1": "accept"}), token=TOKEN, fmt="json", encoding_aes_key=AES_KEY, appid=APPID
    )
    body = json.loads(request.body)
    body["Encrypt"] = body["Encrypt"][::-1]
    q = request.query

    with pytest.raises(InvalidSignatureException):
        WeChatCrypto(TOKEN, AES_KEY, APPID).decrypt_message(
            body, q["msg_signature"], q["timestamp"], q["nonce"]
        )


def test_an_encoding_aes_key_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError):
        build_event_push(
            popup_event("o", {"T1": "accept"}), token=TOKEN, encoding_aes_key="short", appid=APPID
        )


class Receiver:
    """A tiny callback server that checks and decrypts pushes the way our backend must."""

    def __init__(self):
        self.events: list[dict] = []
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/callbacks/wechat"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self.thread.start()

    @Request.application
    def app(self, request: Request) -> Response:
        q = request.args
        try:
            check_signature(TOKEN, q["signature"], q["timestamp"], q["nonce"])
            body = json.loads(request.get_data(as_text=True))
            plain = WeChatCrypto(TOKEN, AES_KEY, APPID).decrypt_message(
                body, q["msg_signature"], q["timestamp"], q["nonce"]
            )
        except (InvalidSignatureException, KeyError):
            return Response("bad signature", status=403)
        self.events.append(json.loads(plain))
        return Response("success")

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def test_the_sandbox_pushes_consent_and_delivery_events_to_the_callback(fresh_sandbox, receiver, apps):
    fresh_sandbox.configure_wechat_push(receiver.url, TOKEN, AES_KEY, fmt="json")
    openid = apps.new_openid()
    fresh_sandbox.issue_wechat_login_code(openid)
    gateway = WeChatGateway(
        apps.wechat_appid, apps.wechat_secret, fresh_sandbox.wechat_api_base_url, timeout=1
    )

    fresh_sandbox.grant_wechat_consent(openid, apps.wechat_template, count=2)
    msgid = gateway.send_subscribe_message(openid, apps.wechat_template, {"thing1": "扣费通知"})
    fresh_sandbox.revoke_wechat_consent(openid, apps.wechat_template)
    assert fresh_sandbox.flush_pushes(timeout=5)

    assert [e["Event"] for e in receiver.events] == [
        "subscribe_msg_popup_event",
        "subscribe_msg_popup_event",
        "subscribe_msg_sent_event",
        "subscribe_msg_change_event",
    ]
    assert all(e["FromUserName"] == openid for e in receiver.events)
    assert receiver.events[2]["List"] == {
        "TemplateId": apps.wechat_template,
        "MsgID": msgid,
        "ErrorCode": "0",
        "ErrorStatus": "success",
    }
    assert [d.status for d in fresh_sandbox.push_deliveries()] == [200, 200, 200, 200]


def test_a_push_to_an_unreachable_callback_is_recorded_as_failed(fresh_sandbox, apps):
    fresh_sandbox.configure_wechat_push("http://127.0.0.1:9/callbacks/wechat", TOKEN, fmt="xml")

    fresh_sandbox.grant_wechat_consent(apps.new_openid(), apps.wechat_template)
    assert fresh_sandbox.flush_pushes(timeout=5)

    (delivery,) = fresh_sandbox.push_deliveries()
    assert delivery.status is None and delivery.error
