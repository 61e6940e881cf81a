"""What WeChat POSTs to a mini-program's message-push URL, built offline (UPSTREAM §1.5–1.6).

Builders return a ``PushRequest`` (method, query, body) that a test can replay against our
``/callbacks/wechat`` endpoint with any client. ``PushDispatcher`` lets a running ``Sandbox``
deliver such requests itself, in order, from one background thread.

Doc: https://developers.weixin.qq.com/miniprogram/dev/framework/server-ability/message-push.html
Events: https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-message-management/subscribe-message/sendMessage.html
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import requests
from wechatpy.crypto import PrpCrypto

logger = logging.getLogger(__name__)

POPUP_EVENT = "subscribe_msg_popup_event"
CHANGE_EVENT = "subscribe_msg_change_event"
SENT_EVENT = "subscribe_msg_sent_event"
_WRAPPERS = {
    POPUP_EVENT: "SubscribeMsgPopupEvent",
    CHANGE_EVENT: "SubscribeMsgChangeEvent",
    SENT_EVENT: "SubscribeMsgSentEvent",
}
# Item fields that real pushes send as bare numbers rather than CDATA.
_NUMERIC_FIELDS = frozenset({"PopupScene"})


@dataclass(frozen=True)
class PushRequest:
    """One HTTP request WeChat would make to the push URL."""

    method: str
    query: dict[str, str]
    body: str = ""
    content_type: str | None = None

    def url(self, base_url: str) -> str:
        """``base_url`` with this request's query string appended."""
        separator = "&" if "?" in base_url else "?"
        return f"{base_url}{separator}{urlencode(self.query)}"

    @property
    def headers(self) -> dict[str, str]:
        """The Content-Type header to send with ``body``."""
        return {"Content-Type": self.content_type} if self.content_type else {}


def signature(token: str, *parts: str) -> str:
    """WeChat's sha1 over the lexicographically sorted strings (token, timestamp, nonce[, Encrypt])."""
    return hashlib.sha1("".join(sorted([token, *parts])).encode()).hexdigest()


def _timestamp_and_nonce(timestamp: str | int | None, nonce: str | None) -> tuple[str, str]:
    return str(timestamp if timestamp is not None else int(time.time())), nonce or str(
        secrets.randbelow(10**10)
    )


def url_verification(
    token: str, echostr: str | None = None, timestamp: str | int | None = None, nonce: str | None = None
) -> PushRequest:
    """The GET WeChat sends when the push URL is saved; the server must echo ``echostr``."""
    timestamp, nonce = _timestamp_and_nonce(timestamp, nonce)
    echostr = echostr or secrets.token_hex(8)
    query = {
        "signature": signature(token, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
        "echostr": echostr,
    }
    return PushRequest("GET", query)


def _event(
    name: str, openid: str, items: list[dict[str, str]], to_user: str, create_time: int | None
) -> dict:
    return {
        "ToUserName": to_user,
        "FromUserName": openid,
        "CreateTime": int(time.time()) if create_time is None else create_time,
        "MsgType": "event",
        "Event": name,
        "List": items,
    }


def popup_event(
    openid: str,
    results: Mapping[str, str],
    *,
    to_user: str = "gh_sandbox00000",
    create_time: int | None = None,
    popup_scene: str = "0",
) -> dict[str, Any]:
    """A ``subscribe_msg_popup_event``: ``results`` maps template id to ``accept`` or ``reject``."""
    items = [
        {"TemplateId": tid, "SubscribeStatusString": status, "PopupScene": popup_scene}
        for tid, status in results.items()
    ]
    return _event(POPUP_EVENT, openid, items, to_user, create_time)


def change_event(
    openid: str,
    template_ids: Iterable[str],
    *,
    to_user: str = "gh_sandbox00000",
    create_time: int | None = None,
) -> dict[str, Any]:
    """A ``subscribe_msg_change_event``; WeChat only ever pushes ``reject`` for it."""
    items = [{"TemplateId": tid, "SubscribeStatusString": "reject"} for tid in template_ids]
    return _event(CHANGE_EVENT, openid, items, to_user, create_time)


def sent_event(
    openid: str,
    deliveries: Iterable[tuple[str, str]],
    *,
    error_code: str = "0",
    error_status: str = "success",
    to_user: str = "gh_sandbox00000",
    create_time: int | None = None,
) -> dict[str, Any]:
    """A ``subscribe_msg_sent_event`` for ``(template_id, msgid)`` pairs; ``ErrorCode`` "0" is success."""
    items = [
        {"TemplateId": tid, "MsgID": str(msgid), "ErrorCode": str(error_code), "ErrorStatus": error_status}
        for tid, msgid in deliveries
    ]
    return _event(SENT_EVENT, openid, items, to_user, create_time)


def _cdata(value: str) -> str:
    # "]]>" cannot appear inside one CDATA section, so split it across two.
    return "<![CDATA[" + str(value).replace("]]>", "]]]]><![CDATA[>") + "]]>"


def render_xml(event: Mapping[str, Any]) -> str:
    """The event as the XML body of plain mode, one ``<List>`` per item."""
    items = "".join(
        "<List>"
        + "".join(f"<{k}>{v if k in _NUMERIC_FIELDS else _cdata(v)}</{k}>" for k, v in item.items())
        + "</List>"
        for item in event["List"]
    )
    wrapper = _WRAPPERS.get(event["Event"], "List")
    return (
        "<xml>"
        f"<ToUserName>{_cdata(event['ToUserName'])}</ToUserName>"
        f"<FromUserName>{_cdata(event['FromUserName'])}</FromUserName>"
        f"<CreateTime>{int(event['CreateTime'])}</CreateTime>"
        f"<MsgType>{_cdata(event['MsgType'])}</MsgType>"
        f"<Event>{_cdata(event['Event'])}</Event>"
        f"<{wrapper}>{items}</{wrapper}>"
        "</xml>"
    )


def render_json(event: Mapping[str, Any], *, wrapped: bool = False, create_time_as_str: bool = True) -> str:
    """The event as a JSON body; ``List`` is an object for one item and an array for several.

    Real payloads put ``List`` at the top level or inside ``{"SubscribeMsgSentEvent": {...}}``
    (``wrapped``), and send ``CreateTime`` as a string or an int; receivers must take all of them.
    """
    items = event["List"]
    listed: Any = items[0] if len(items) == 1 else list(items)
    body: dict[str, Any] = {k: v for k, v in event.items() if k != "List"}
    body["CreateTime"] = str(body["CreateTime"]) if create_time_as_str else int(body["CreateTime"])
    if wrapped:
        body[_WRAPPERS.get(event["Event"], "List")] = {"List": listed}
    else:
        body["List"] = listed
    return json.dumps(body, ensure_ascii=False)


def aes_key(encoding_aes_key: str) -> bytes:
    """The 32-byte AES key encoded in a 43-character EncodingAESKey."""
    key = base64.b64decode(encoding_aes_key + "=")
    if len(encoding_aes_key) != 43 or len(key) != 32:
        raise ValueError("EncodingAESKey must be 43 characters of base64 encoding 32 bytes")
    return key


def build_event_push(
    event: Mapping[str, Any],
    *,
    token: str,
    fmt: str = "xml",
    encoding_aes_key: str | None = None,
    appid: str | None = None,
    timestamp: str | int | None = None,
    nonce: str | None = None,
    wrapped: bool = False,
    create_time_as_str: bool = True,
) -> PushRequest:
    """The POST WeChat makes for ``event``: plain mode, or safe mode when ``encoding_aes_key`` is given.

    Safe mode encrypts the plain body (random16 + length + body + appid, AES-256-CBC) and adds
    ``encrypt_type=aes`` and ``msg_signature`` = sha1(sorted token, timestamp, nonce, Encrypt).
    """
    if fmt not in ("xml", "json"):
        raise ValueError("fmt must be 'xml' or 'json'")
    timestamp, nonce = _timestamp_and_nonce(timestamp, nonce)
    plain = (
        render_xml(event)
        if fmt == "xml"
        else render_json(event, wrapped=wrapped, create_time_as_str=create_time_as_str)
    )
    query = {"signature": signature(token, timestamp, nonce), "timestamp": timestamp, "nonce": nonce}
    content_type = "text/xml; charset=utf-8" if fmt == "xml" else "application/json; charset=utf-8"
    if encoding_aes_key is None:
        return PushRequest("POST", query, plain, content_type)
    if not appid:
        raise ValueError("safe mode needs the appid, which is part of the encrypted text")
    encrypt = PrpCrypto(aes_key(encoding_aes_key)).encrypt(plain, appid).decode()
    query.update(encrypt_type="aes", msg_signature=signature(token, timestamp, nonce, encrypt))
    if fmt == "xml":
        to_user = _cdata(event["ToUserName"])
        body = f"<xml><ToUserName>{to_user}</ToUserName><Encrypt>{_cdata(encrypt)}</Encrypt></xml>"
    else:
        body = json.dumps({"ToUserName": event["ToUserName"], "Encrypt": encrypt})
    return PushRequest("POST", query, body, content_type)


@dataclass
class PushTarget:
    """Where and how a Sandbox delivers WeChat message pushes (the mini-program's server config)."""

    url: str
    token: str
    appid: str
    encoding_aes_key: str | None = None
    fmt: str = "xml"
    original_id: str = "gh_sandbox00000"
    wrapped: bool = False

    def __post_init__(self) -> None:
        if self.fmt not in ("xml", "json"):
            raise ValueError("fmt must be 'xml' or 'json'")
        if self.encoding_aes_key is not None:
            aes_key(self.encoding_aes_key)


@dataclass
class PushDelivery:
    """The outcome of one push: the HTTP status, or the error when the POST did not complete."""

    event: str
    openid: str
    status: int | None
    body: str = ""
    error: str | None = None
    items: list[dict[str, str]] = field(default_factory=list)


class PushDispatcher:
    """Delivers events to a ``PushTarget`` in order from one daemon thread, best effort, no retries."""

    def __init__(self, target: PushTarget, timeout: float = 5.0):
        self.target = target
        self.timeout = timeout
        self.deliveries: list[PushDelivery] = []
        self._queue: queue.Queue[Any] = queue.Queue()
        self._http = requests.Session()
        # The push target is normally a local backend; an environment proxy must not intercept it.
        self._http.trust_env = False
        self._thread = threading.Thread(target=self._run, name="sandbox-push", daemon=True)
        self._thread.start()

    def submit(self, event: Mapping[str, Any]) -> None:
        """Queue one event (from ``popup_event`` and friends) for delivery."""
        self._queue.put(dict(event))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far was delivered; False on timeout."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self) -> None:
        """Deliver what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout=self.timeout + 1)
        self._http.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            self.deliveries.append(self._deliver(item))

    def _deliver(self, event: dict[str, Any]) -> PushDelivery:
        t = self.target
        request = build_event_push(
            {**event, "ToUserName": t.original_id},
            token=t.token,
            fmt=t.fmt,
            encoding_aes_key=t.encoding_aes_key,
            appid=t.appid,
            wrapped=t.wrapped,
        )
        delivery = PushDelivery(event["Event"], event["FromUserName"], None, items=list(event["List"]))
        try:
            response = self._http.post(
                t.url,
                params=request.query,
                data=request.body.encode(),
                headers=request.headers,
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            logger.warning("push of %s to %s failed: %s", event["Event"], t.url, exc)
            delivery.error = str(exc)
        else:
            delivery.status, delivery.body = response.status_code, response.text
        return delivery
