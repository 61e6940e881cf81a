"""``GET|POST /api/v1/callbacks/wechat``: WeChat's message push (SPEC §5, R15).

GET is the URL check: answer the bare ``echostr`` when ``signature`` = sha1(sorted token, timestamp,
nonce) matches. POST carries events as XML or JSON, plain or — with an EncodingAESKey configured —
in safe mode, where ``msg_signature`` also covers the encrypted body. Plain mode's signature does
not cover the body, so once ``WECHAT_AES_KEY`` is set, plain POSTs are refused. Either way a bad
signature or a stale timestamp is a 401, and the reply to a good push is ``success`` within WeChat's
5-second budget (it repeats unanswered pushes; applying an event twice changes nothing).
https://developers.weixin.qq.com/miniprogram/dev/framework/server-ability/message-push.html
"""

from __future__ import annotations

import binascii
import json
import logging
import struct
import time
from typing import Any
from xml.parsers.expat import ExpatError

import xmltodict
from flask import Response, current_app, request
from flask_smorest import Blueprint
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException
from wechatpy.utils import check_signature

from app import errors
from app.web import now, session
from notify.events import PushEvent, apply_push_event

log = logging.getLogger(__name__)

bp = Blueprint("wechat_callbacks", __name__, description="WeChat message push (subscribe-message events)")

MAX_BODY_BYTES = 64 * 1024
TIMESTAMP_WINDOW_SECONDS = 300


def _token() -> str:
    token = current_app.config.get("WECHAT_MSG_TOKEN")
    if not token:
        raise errors.NotFound("Message push is not configured.")
    return token


def _verify_plain(token: str) -> None:
    args = request.args
    timestamp = args.get("timestamp", "")
    try:
        fresh = abs(time.time() - int(timestamp)) <= TIMESTAMP_WINDOW_SECONDS
    except ValueError:
        fresh = False
    if not fresh:
        raise errors.SignatureInvalid("The push timestamp is missing or stale.")
    try:
        check_signature(token, args.get("signature", ""), timestamp, args.get("nonce", ""))
    except InvalidSignatureException:
        raise errors.SignatureInvalid() from None


@bp.get("")
def verify_url():
    """WeChat's check of the push URL: echo ``echostr`` when the signature matches."""
    _verify_plain(_token())
    return Response(request.args.get("echostr", ""), mimetype="text/plain")


@bp.post("")
def receive_push():
    """A subscribe-message event (popup, change, sent) in plain or safe mode, XML or JSON."""
    token = _token()
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise errors.PayloadTooLarge()
    body = request.get_data(as_text=True)
    _verify_plain(token)
    aes_key = current_app.config.get("WECHAT_AES_KEY")
    if request.args.get("encrypt_type") == "aes":
        if not aes_key:
            raise errors.SignatureInvalid("Safe mode is not configured.")
        body = _decrypt(token, aes_key, body)
    elif aes_key:
        raise errors.SignatureInvalid("Pushes must use safe mode (encrypt_type=aes).")
    event = parse_event(body)
    if event is not None:
        outcome = apply_push_event(session(), event, now())
        log.info("wechat push %s: %s", event.event, outcome)
    return Response("success", mimetype="text/plain")


def _decrypt(token: str, aes_key: str, body: str) -> str:
    crypto = WeChatCrypto(token, aes_key, current_app.config["WECHAT_APPID"])
    try:
        envelope: Any = json.loads(body) if body.lstrip().startswith("{") else body
        return crypto.decrypt_message(envelope, request.args.get("msg_signature", ""),
                                      request.args.get("timestamp", ""), request.args.get("nonce", ""))
    except (InvalidSignatureException, InvalidAppIdException):
        raise errors.SignatureInvalid() from None
    except (KeyError, TypeError, ValueError, binascii.Error, struct.error, IndexError) as exc:
        raise errors.ValidationFailed("The encrypted push cannot be read.",
                                      details={"reason": type(exc).__name__}) from None


def _items(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The event's items: ``List`` at the top or inside a wrapper; one item is an object, not a list."""
    found: Any = payload.get("List")
    if found is None:
        for value in payload.values():
            if isinstance(value, dict) and "List" in value:
                found = value["List"]
                break
    if isinstance(found, dict):
        found = [found]
    return [item for item in (found or []) if isinstance(item, dict)]


def parse_event(text: str) -> PushEvent | None:
    """The event in a plain XML or JSON body, or None when it is not an event we read."""
    try:
        if text.lstrip().startswith("<"):
            payload = xmltodict.parse(text, force_list=("List",)).get("xml") or {}
        else:
            payload = json.loads(text)
    except (ValueError, ExpatError) as exc:
        raise errors.ValidationFailed("The push body is neither XML nor JSON.",
                                      details={"reason": type(exc).__name__}) from None
    if not isinstance(payload, dict) or payload.get("MsgType") != "event" or not payload.get("FromUserName"):
        return None
    return PushEvent(str(payload["FromUserName"]), str(payload.get("Event") or ""),
                     str(payload.get("CreateTime") or ""), _items(payload))
