"""``GET|POST /api/v1/callbacks/wechat``: WeChat's message push (SPEC §5, R15).

GET is the URL check: answer the bare ``echostr`` when ``signature`` = sha1(sorted token, timestamp,
nonce) matches. POST carries events as XML or JSON, plain or — with an EncodingAESKey configured —
in safe mode, where ``msg_signature`` also covers the encrypted body. Plain mode's signature does
not cover the body, so once ``WECHAT_AES_KEY`` is set, plain POSTs are refused. Either way a bad
signature or a stale timestamp is a 401, and the reply to a good push is ``success`` within WeChat's
5-second budget (it repeats unanswered pushes; applying an event twice changes nothing).

Replays (issue 8): plain mode's signature covers only token, timestamp and nonce, so a signed query
string seen once (a proxy log) could carry any body within its ±300 s window. Every accepted POST —
plain or safe mode — records its (timestamp, nonce) with the SHA-256 of its body for twice the window,
in Redis (``SET NX EX``) when configured, else in this process. The same pair again with the same body
is a repeat (answered ``success``, not applied again); with another body it is ``NONCE_REUSED`` (401).
If the store cannot answer (Redis down, the in-process store full) the push is refused with 503 —
fail closed. Production requires safe mode (``WECHAT_AES_KEY``), where the signature covers the body.
https://developers.weixin.qq.com/miniprogram/dev/framework/server-ability/message-push.html
"""

from __future__ import annotations

import binascii
import hashlib
import json
import logging
import re
import struct
import threading
import time
from typing import Any
from xml.parsers.expat import ExpatError

import xmltodict
from flask import Response, current_app, request
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException
from wechatpy.utils import check_signature

from app import errors
from app.envelope import Blueprint
from app.web import now, session
from notify.events import PushEvent, apply_push_event

log = logging.getLogger(__name__)

bp = Blueprint("wechat_callbacks", __name__, description="WeChat message push (subscribe-message events)")

MAX_BODY_BYTES = 64 * 1024
TIMESTAMP_WINDOW_SECONDS = 300
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
NONCE_KEEP_SECONDS = 2 * TIMESTAMP_WINDOW_SECONDS  # every timestamp still accepted, with margin
_STORE_KEY = "wechat_push_nonces"


class PushNonces:
    """(timestamp, nonce) → SHA-256 of the body of the push that used it, kept ``NONCE_KEEP_SECONDS``.

    In Redis when the app has one (shared by every process), otherwise in this process (the embedded
    default runs one). Fails closed: ``UpstreamUnavailable`` when it cannot answer.
    """

    MAX_IN_PROCESS = 100_000

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._seen: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def claim(self, redis: Any, key: str, digest: str) -> str:
        """``new`` (recorded now), ``repeat`` (same body seen) or ``conflict`` (another body)."""
        if redis is not None:
            try:
                if redis.set(f"copay:wechat-push:{key}", digest, nx=True, ex=NONCE_KEEP_SECONDS):
                    return "new"
                seen = redis.get(f"copay:wechat-push:{key}")
            except Exception as exc:  # noqa: BLE001 — any Redis failure: fail closed
                log.error("push nonce store unavailable: %s", type(exc).__name__)
                raise errors.UpstreamUnavailable("The push cannot be checked right now.") from None
            if seen is None:  # expired in between: the timestamp check refuses it anyway next time
                return "repeat"
            return "repeat" if (seen.decode() if isinstance(seen, bytes) else seen) == digest else "conflict"
        now = self._clock()
        with self._lock:
            found = self._seen.get(key)
            if found is not None and found[1] > now:
                return "repeat" if found[0] == digest else "conflict"
            if len(self._seen) >= self.MAX_IN_PROCESS:
                self._seen = {k: v for k, v in self._seen.items() if v[1] > now}
                if len(self._seen) >= self.MAX_IN_PROCESS:
                    raise errors.UpstreamUnavailable("Too many pushes to check right now.")
            self._seen[key] = (digest, now + NONCE_KEEP_SECONDS)
            return "new"

    def release(self, redis: Any, key: str) -> None:
        """Forget a claim whose push failed, so WeChat's retry of it is applied."""
        if redis is not None:
            try:
                redis.delete(f"copay:wechat-push:{key}")
            except Exception:  # noqa: BLE001 — the retry is then answered as a repeat; logged
                log.error("could not release a push nonce; its retry will not be applied")
            return
        with self._lock:
            self._seen.pop(key, None)


@bp.record_once
def _install_nonce_store(state: Any) -> None:
    state.app.extensions.setdefault(_STORE_KEY, PushNonces())


def _token() -> str:
    token = current_app.config.get("WECHAT_MSG_TOKEN")
    if not token:
        raise errors.NotFound("Message push is not configured.")
    return token


def _verify_plain(token: str) -> None:
    args = request.args
    timestamp = args.get("timestamp", "")
    # Unix time in ASCII digits: int() alone also takes "１７…", "17_00…", " 17…" and "+17…".
    fresh = (_TIMESTAMP.fullmatch(timestamp) is not None
             and abs(time.time() - int(timestamp)) <= TIMESTAMP_WINDOW_SECONDS)
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
    raw = request.get_data()
    key = f"{request.args.get('timestamp', '')}:{request.args.get('nonce', '')}"
    nonces: PushNonces = current_app.extensions[_STORE_KEY]
    redis = current_app.extensions.get("redis")
    claim = nonces.claim(redis, key, hashlib.sha256(raw).hexdigest())
    if claim == "conflict":
        raise errors.NonceReused("This signed push was already used with another body.")
    if claim == "repeat":
        log.info("wechat push repeated (timestamp, nonce): not applied again")
        return Response("success", mimetype="text/plain")
    try:
        event = parse_event(body)
        if event is not None:
            outcome = apply_push_event(session(), event, now())
            log.info("wechat push %s: %s", event.event, outcome)
    except Exception:
        nonces.release(redis, key)
        raise
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
