"""Alipay open gateway over python-alipay-sdk 3.4.0: OAuth code exchange and mini-program messages.

Also home of the one fen ↔ yuan-string conversion (STYLE §8): Alipay speaks yuan strings
("20.00"), everything else in the service speaks integer fen.

SDK quirks handled here (UPSTREAM §4, §6): the gateway URL is the private ``_gateway`` attribute;
transport is ``urllib`` (GET, whole request in the query string) with ``AliPayConfig.timeout`` per
socket operation; ``error_response`` or a missing ``sign`` raises ``AliPayException`` with no
public code, a bad reply signature raises ``AliPayValidationError``, and signed business failures
come back as a plain dict whose ``code`` must be checked.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import logging
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from alipay import AliPay
from alipay.exceptions import AliPayException, AliPayValidationError
from alipay.utils import AliPayConfig
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as symmetric_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from app.errors import LoginCodeInvalid, UpstreamUnavailable
from app.platforms import PERMANENT, PlatformError, is_loopback_url, platform_id

logger = logging.getLogger(__name__)

DEFAULT_GATEWAY_URL = "https://openapi.alipay.com/gateway.do"
SUCCESS = "10000"
# Alipay reads the common "timestamp" parameter as Beijing time; the official Java SDK formats
# it in GMT+8 (AlipayConstants.DATE_TIMEZONE), while python-alipay-sdk uses the host's local time.
_BEIJING = timezone(timedelta(hours=8))


# --- money -----------------------------------------------------------------------------------

_YUAN = re.compile(r"(-?)([0-9]+)(?:\.([0-9]{1,2}))?")


def fen_to_yuan_str(fen: int) -> str:
    """Integer fen to Alipay's yuan string: 1230 → "12.30", -5 → "-0.05"."""
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise TypeError(f"fen must be an int, not {type(fen).__name__}")
    sign = "-" if fen < 0 else ""
    yuan, cents = divmod(abs(fen), 100)
    return f"{sign}{yuan}.{cents:02d}"


def yuan_str_to_fen(text: str) -> int:
    """Alipay's yuan string to integer fen, exactly: "12.3" → 1230; rejects floats and malformed text."""
    if not isinstance(text, str):
        raise TypeError(f"amount must be a str, not {type(text).__name__}")
    match = _YUAN.fullmatch(text)
    if not match:
        raise ValueError(f"not a yuan amount with at most two decimals: {text!r}")
    sign, yuan, cents = match.groups()
    fen = int(yuan) * 100 + int((cents or "").ljust(2, "0"))
    return -fen if sign else fen


# --- gateway ---------------------------------------------------------------------------------


class _GatewayClient(AliPay):
    """``AliPay`` pointed at ``gateway_url``, with Beijing timestamps and its own URL opener."""

    def __init__(
        self,
        appid: str,
        app_private_key_pem: str,
        alipay_public_key_pem: str,
        gateway_url: str,
        timeout: float,
    ):
        super().__init__(
            appid,
            app_private_key_string=app_private_key_pem,
            alipay_public_key_string=alipay_public_key_pem,
            sign_type="RSA2",
            config=AliPayConfig(timeout=timeout),
        )
        self._gateway = gateway_url
        # urllib.request.urlopen honours *_proxy from the environment and bypasses them only for
        # hosts listed in no_proxy; a loopback gateway (the emulator) must never go through one.
        handlers = [urllib.request.ProxyHandler({})] if is_loopback_url(gateway_url) else []
        self._opener = urllib.request.build_opener(*handlers)

    def build_body(self, method, biz_content=None, **kwargs):
        data = super().build_body(method, biz_content, **kwargs)
        data["timestamp"] = datetime.now(_BEIJING).strftime("%Y-%m-%d %H:%M:%S")
        return data

    def verified_sync_response(self, data, response_type):
        # Same as the SDK's, but through our opener instead of the global urlopen.
        url = self._gateway + "?" + self.sign_data(data)
        with self._opener.open(url, timeout=self._config.timeout) as response:
            raw = response.read().decode()
        return self._verify_and_return_sync_response(raw, response_type)


@dataclass(frozen=True)
class AlipayIdentity:
    """The user behind an auth code: ``user_id`` (2088…) or, for OpenID apps, ``open_id``."""

    user_id: str | None
    open_id: str | None
    union_id: str | None


@dataclass(frozen=True)
class AlipayCertification:
    """What ``alipay.user.info.share`` says about the user's real-name certification."""

    user_id: str | None
    open_id: str | None
    certified: bool
    name: str | None
    cert_type: str | None
    cert_no: str | None


class PhoneResponseInvalid(ValueError):
    """A ``my.getPhoneNumber`` response that does not verify, does not decrypt, or carries no number."""


def decode_aes_key(value: str) -> bytes:
    """``ALIPAY_AES_KEY`` (base64 of 16, 24 or 32 bytes) as raw key bytes; ValueError otherwise."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("ALIPAY_AES_KEY must be base64") from None
    if len(raw) not in (16, 24, 32):
        raise ValueError("ALIPAY_AES_KEY must be base64 of a 16, 24 or 32-byte AES key")
    return raw


def open_phone_response(text: str, alipay_public_key_pem: str, aes_key: bytes) -> str:
    """The mobile number inside ``my.getPhoneNumber``'s ``res.response`` (UPSTREAM §3).

    1. The RSA2 signature (SHA256withRSA, Alipay's public key) is checked over the ciphertext
       wrapped in double quotes, as Alipay's server-side sample does for encrypted content;
    2. the ciphertext is decrypted with the app's content key (AES-CBC, zero IV, PKCS#7);
    3. the plaintext must be ``{"code": "10000", "mobile": ...}``.
    Raises ``PhoneResponseInvalid`` naming which step failed (never the number).
    """
    try:
        outer = json.loads(text)
    except (TypeError, ValueError):
        raise PhoneResponseInvalid("not JSON") from None
    if not isinstance(outer, dict):
        raise PhoneResponseInvalid("not a JSON object")
    content, sign = outer.get("response"), outer.get("sign")
    if not isinstance(content, str) or not isinstance(sign, str) or not content or not sign:
        raise PhoneResponseInvalid("response or sign missing")
    if str(outer.get("sign_type", "RSA2")).upper() != "RSA2" or str(outer.get("encrypt_type", "AES")).upper() != "AES":
        raise PhoneResponseInvalid("only RSA2 signatures and AES encryption are accepted")
    if content.startswith("{"):
        raise PhoneResponseInvalid("the response is not encrypted")
    key = serialization.load_pem_public_key(alipay_public_key_pem.encode())
    if not isinstance(key, rsa.RSAPublicKey):
        raise PhoneResponseInvalid("ALIPAY_PUBLIC_KEY is not an RSA key")
    try:
        key.verify(base64.b64decode(sign, validate=True), f'"{content}"'.encode(), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        raise PhoneResponseInvalid("signature does not verify") from None
    try:
        raw = base64.b64decode(content, validate=True)
        decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(bytes(16))).decryptor()
        padded = decryptor.update(raw) + decryptor.finalize()
        unpadder = symmetric_padding.PKCS7(128).unpadder()
        inner = json.loads((unpadder.update(padded) + unpadder.finalize()).decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise PhoneResponseInvalid("does not decrypt with ALIPAY_AES_KEY") from None
    if not isinstance(inner, dict) or inner.get("code") != SUCCESS:
        raise PhoneResponseInvalid("the user gave no number")
    mobile = inner.get("mobile")
    if not isinstance(mobile, str) or not mobile:
        raise PhoneResponseInvalid("no mobile in the response")
    return mobile


def _error_payload(exc: AliPayException) -> dict[str, Any]:
    """The ``error_response``/``*_response`` object of the raw reply an ``AliPayException`` carries."""
    # The SDK keeps the raw reply only in a name-mangled attribute.
    raw = getattr(exc, "_AliPayException__message", "") or ""
    try:
        reply = json.loads(raw)
    except (TypeError, ValueError):
        return {"code": getattr(exc, "_AliPayException__code", None) or "", "msg": str(raw)[:200]}
    for key, value in reply.items():
        if key.endswith("_response") and isinstance(value, dict):
            return value
    return {"code": "", "msg": str(raw)[:200]}


def _transport_error(exc: BaseException) -> PlatformError:
    if isinstance(exc, urllib.error.HTTPError):
        exc.close()  # it holds the open response
        code = "http_5xx" if exc.code >= 500 else "http_4xx"
        return PlatformError("alipay", code, f"HTTP {exc.code}")
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return PlatformError("alipay", "timeout", str(reason))
    return PlatformError("alipay", "network", str(reason))


class AlipayGateway:
    """Login and mini-program template messages for one Alipay app (RSA2 keys, PEM)."""

    def __init__(
        self,
        appid: str,
        app_private_key_pem: str,
        alipay_public_key_pem: str,
        gateway_url: str = DEFAULT_GATEWAY_URL,
        timeout: float = 5.0,
    ):
        self.appid = appid
        self._client = _GatewayClient(appid, app_private_key_pem, alipay_public_key_pem, gateway_url, timeout)

    def _call(self, method: str, biz_content: dict[str, Any] | None = None, **params: str) -> dict[str, Any]:
        """One gateway call; any failure becomes ``PlatformError`` (``code`` = sub_code when given)."""
        try:
            reply = self._client.server_api(method, biz_content, **params)
        except AliPayValidationError as exc:
            logger.error(
                "alipay %s: the reply signature does not verify with ALIPAY_PUBLIC_KEY "
                "(wrong key configured, or the reply was tampered with)",
                method,
            )
            raise PlatformError(
                "alipay", "invalid_response_signature", "reply signature invalid", PERMANENT
            ) from exc
        except AliPayException as exc:
            err = _error_payload(exc)
            raise PlatformError(
                "alipay", err.get("sub_code") or err.get("code") or "", _describe(err)
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise _transport_error(exc) from exc
        except (ValueError, AttributeError, KeyError) as exc:
            # The SDK trips over replies that are not JSON or lack the expected members.
            raise PlatformError("alipay", "bad_response", f"unexpected reply: {exc!r}") from exc
        # Signed business failures are returned, not raised; oauth.token has no code on success.
        if "code" in reply and reply["code"] != SUCCESS:
            raise PlatformError("alipay", reply.get("sub_code") or reply["code"], _describe(reply))
        return reply

    def exchange_auth_code(self, auth_code: str) -> AlipayIdentity:
        """Exchange a ``my.getAuthCode`` code for the user's ids (alipay.system.oauth.token).

        Raises ``LoginCodeInvalid`` for a bad, used or expired code and ``UpstreamUnavailable``
        for anything else (network, Alipay errors, a reply whose signature does not verify).
        """
        if not auth_code:
            raise LoginCodeInvalid()
        try:
            # grant_type and code are common (top-level) parameters of this API, not biz_content.
            # https://opendocs.alipay.com/open/02ailc
            reply = self._call("alipay.system.oauth.token", grant_type="authorization_code", code=auth_code)
        except PlatformError as err:
            if _is_code_error(err.code):
                raise LoginCodeInvalid() from err
            log = logger.warning if err.transient else logger.error
            log("alipay oauth.token failed: %s", err)
            raise UpstreamUnavailable() from err
        ids = _ids(reply, "oauth.token")
        if not (ids["user_id"] or ids["open_id"]):
            logger.error("alipay oauth.token reply has neither user_id nor open_id: %s", sorted(reply))
            raise UpstreamUnavailable()
        return AlipayIdentity(ids["user_id"], ids["open_id"], ids["union_id"])

    def certification(self, auth_code: str) -> AlipayCertification:
        """The real-name certification of the user behind an ``auth_user`` auth code.

        The code is exchanged for a user token (alipay.system.oauth.token), then
        ``alipay.user.info.share`` is called with it (``is_certified``, ``user_name``, ``cert_no`` need
        the app's sensitive-field grant). Raises ``LoginCodeInvalid`` for a bad code and
        ``UpstreamUnavailable`` for anything else.
        """
        if not auth_code:
            raise LoginCodeInvalid()
        try:
            token = self._call("alipay.system.oauth.token", grant_type="authorization_code", code=auth_code)
            info = self._call("alipay.user.info.share", auth_token=str(token.get("access_token") or ""))
        except PlatformError as err:
            if _is_code_error(err.code):
                raise LoginCodeInvalid() from err
            (logger.warning if err.transient else logger.error)("alipay certification failed: %s", err)
            raise UpstreamUnavailable() from err
        token_ids, info_ids = _ids(token, "oauth.token"), _ids(info, "user.info.share")
        certified, name = info.get("is_certified"), info.get("user_name") or None
        cert_type, cert_no = info.get("cert_type"), info.get("cert_no") or None
        # Garbage is not a "no": a field of the wrong type or size is a reply we cannot read (503).
        if (certified not in (None, "T", "F") or not _text_or_none(name, 64) or not _text_or_none(cert_no, 32)
                or not (cert_type in (None, "") or isinstance(cert_type, str | int) and len(str(cert_type)) <= 8)
                or isinstance(cert_type, bool)):
            logger.error("alipay user.info.share reply has malformed certification fields: %s", sorted(info))
            raise UpstreamUnavailable()
        return AlipayCertification(
            user_id=info_ids["user_id"] or token_ids["user_id"], open_id=info_ids["open_id"] or token_ids["open_id"],
            certified=certified == "T", name=name, cert_type=str(cert_type or "") or None, cert_no=cert_no)

    def send_template_message(
        self,
        to_user_id: str | None = None,
        to_open_id: str | None = None,
        *,
        template_id: str,
        data: dict[str, str],
        page: str | None = None,
    ) -> None:
        """Send a subscription message (alipay.open.app.mini.templatemessage.send); raises ``PlatformError``.

        Give exactly one of ``to_user_id`` (2088…) and ``to_open_id`` (OpenID apps).
        https://opendocs.alipay.com/mini/02cth2
        """
        if (to_user_id is None) == (to_open_id is None):
            raise ValueError("give exactly one of to_user_id and to_open_id")
        biz: dict[str, Any] = {
            "user_template_id": template_id,
            # data is a JSON string inside biz_content; no form_id for subscription templates.
            "data": json.dumps({key: {"value": value} for key, value in data.items()}, ensure_ascii=False),
        }
        if to_user_id is not None:
            biz["to_user_id"] = to_user_id
        else:
            biz["to_open_id"] = to_open_id
        if page:
            biz["page"] = page
        self._call("alipay.open.app.mini.templatemessage.send", biz)


# The widest each id may be: the users table's columns (alipay_user_id 64, alipay_open_id 128).
_ID_LENGTHS = {"user_id": 64, "open_id": 128, "union_id": 64}


def _ids(reply: dict[str, Any], api: str) -> dict[str, str | None]:
    """``user_id``, ``open_id`` and ``union_id`` of a reply, each None when absent; a present one
    that is not an id (a number, an object, 10 000 characters) is ``UpstreamUnavailable``."""
    ids: dict[str, str | None] = {}
    for key, length in _ID_LENGTHS.items():
        value = reply.get(key)
        if value in (None, ""):
            ids[key] = None
            continue
        ids[key] = platform_id(value, length)
        if ids[key] is None:
            logger.error("alipay %s reply has a malformed %s", api, key)
            raise UpstreamUnavailable()
    return ids


def _text_or_none(value: Any, max_length: int) -> bool:
    """Whether ``value`` is None or a string of at most ``max_length`` characters."""
    return value is None or isinstance(value, str) and len(value) <= max_length


def _describe(err: dict[str, Any]) -> str:
    return " / ".join(str(err[k]) for k in ("code", "msg", "sub_code", "sub_msg") if err.get(k))


def _is_code_error(code: str) -> bool:
    # isv.code-invalid is documented; other isv.code-* sub_codes (used, expired) are treated alike.
    return code.startswith("isv.code-") or code == "isv.invalid-code"
