"""Emulated Alipay open gateway (``/gateway.do``): OAuth code exchange, mini-program messages, the
user's certified identity (alipay.user.info.share) and ``my.getPhoneNumber``'s encrypted, signed
response (made by ``phone_response`` for the mini-program side).

Requests are checked like the real gateway does (UPSTREAM §3–4): the app must be registered and
the RSA2 signature must verify with its public key. Replies are signed with the emulator's own
RSA key in the exact shape python-alipay-sdk verifies, so a backend configured with
``Sandbox.alipay_public_key_pem`` as its Alipay public key accepts them.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as symmetric_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from flask import Blueprint, Response, request

from sandbox.state import ALIPAY_APIS, SandboxState, SentMessage

OAUTH_METHOD = "alipay.system.oauth.token"
TEMPLATE_SEND_METHOD = "alipay.open.app.mini.templatemessage.send"
USER_INFO_METHOD = "alipay.user.info.share"
AUTH_CODE_TTL = 24 * 3600
USER_TOKEN_TTL = 1_296_000
REFRESH_TOKEN_TTL = 2_592_000
KEYWORD_MAX_CHARS = 50
_BEIJING = timezone(timedelta(hours=8))
_REQUIRED_PARAMS = ("app_id", "method", "charset", "sign_type", "sign", "timestamp", "version")
_MSG = {
    "10000": "Success",
    "20000": "Service Currently Unavailable",
    "20001": "Insufficient Token Permissions",
    "40001": "Missing Required Arguments",
    "40002": "Invalid Arguments",
    "40004": "Business Failed",
    "40006": "Insufficient Permissions",
}
_DEFAULT_SUB_CODE = {"20000": "isp.unknow-error", "40004": "SYSTEM_ERROR"}
# No sub_code for "user has not subscribed" is documented for templatemessage.send; this one is
# plausible but NOT verified against the real platform.
NO_CONSENT_SUB_CODE = "USER_NOT_SUBSCRIBED"


def generate_private_key_pem() -> str:
    """A new 2048-bit RSA private key, PKCS#8 PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_key_pem(private_key_pem: str) -> str:
    """The SubjectPublicKeyInfo PEM of an RSA private key PEM."""
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def canonical_string(params: dict[str, str]) -> str:
    """The string Alipay signs: non-empty params except ``sign``, sorted by key, ``k=v`` joined by ``&``.

    https://opendocs.alipay.com/common/02kf5q (自行实现签名)
    """
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "sign" and v != "")


class AlipayError(Exception):
    """A failure answered with ``code``/``msg``/``sub_code``/``sub_msg``."""

    def __init__(
        self, code: str, sub_code: str, sub_msg: str, *, top_level: bool = False, signed: bool = True
    ):
        super().__init__(code, sub_code, sub_msg)
        self.code, self.sub_code, self.sub_msg = code, sub_code, sub_msg
        self.top_level, self.signed = top_level, signed

    def payload(self) -> dict[str, str]:
        return {
            "code": self.code,
            "msg": _MSG.get(self.code, "Business Failed"),
            "sub_code": self.sub_code,
            "sub_msg": self.sub_msg,
        }


def _gateway_error(code: str, sub_code: str, sub_msg: str) -> AlipayError:
    # Gateway-level rejections (missing params, unknown app, bad signature) come back as an
    # unsigned top-level "error_response" [comm].
    return AlipayError(code, sub_code, sub_msg, top_level=True, signed=False)


@dataclass
class _App:
    appid: str
    public_key: rsa.RSAPublicKey
    templates: set[str]
    aes_key: bytes | None = None  # 接口内容加密 key (for my.getPhoneNumber)


@dataclass
class _Identity:
    """A user's Alipay real-name certification (实名认证) and bound mobile number."""

    name: str | None = None
    cert_no: str | None = None
    certified: bool = False
    phone: str | None = None


def aes_encrypt(key: bytes, plaintext: str) -> str:
    """Alipay's content encryption: AES-CBC, IV of 16 zero bytes, PKCS#7, base64 (UPSTREAM §3)."""
    padder = symmetric_padding.PKCS7(128).padder()
    data = padder.update(plaintext.encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
    return base64.b64encode(encryptor.update(data) + encryptor.finalize()).decode()


@dataclass
class _AuthCode:
    appid: str
    user_id: str | None
    open_id: str | None
    union_id: str | None
    issued_at: float
    used: bool = False


@dataclass
class _Consent:
    credits: int = 0
    long_term: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"one_time_credits": self.credits, "long_term": self.long_term}


class AlipayEmulator:
    """The Alipay side of a Sandbox: control methods and the ``/gateway.do`` dispatcher."""

    def __init__(self, state: SandboxState, private_key_pem: str | None = None):
        self.state = state
        # The emulator's own key is trusted input; OpenSSL's full RSA check costs ~80 ms per Sandbox.
        self._private_key = serialization.load_pem_private_key(
            (private_key_pem or generate_private_key_pem()).encode(),
            password=None,
            unsafe_skip_rsa_key_validation=True,
        )
        self.public_key_pem = (
            self._private_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        self._apps: dict[str, _App] = {}
        self._codes: dict[str, _AuthCode] = {}
        self._refresh_tokens: dict[str, _AuthCode] = {}
        self._consents: dict[tuple[str, str], _Consent] = {}
        self._identities: dict[str, _Identity] = {}
        # User access tokens from oauth.token: token → (auth entry, expires at).
        self._user_tokens: dict[str, tuple[_AuthCode, float]] = {}

    # --- control ------------------------------------------------------------------------------

    def register_app(
        self, appid: str, app_public_key_pem: str, templates: list[str] | tuple[str, ...] = (),
        aes_key: str | None = None,
    ) -> None:
        """Add (or replace) an app with the public key of its RSA2 key pair, its template ids and its
        content-encryption AES key (base64, as ``ALIPAY_AES_KEY``)."""
        key = serialization.load_pem_public_key(app_public_key_pem.encode())
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("the app public key must be an RSA key")
        raw_aes = None
        if aes_key:
            raw_aes = base64.b64decode(aes_key, validate=True)
            if len(raw_aes) not in (16, 24, 32):
                raise ValueError("aes_key must be base64 of 16, 24 or 32 bytes")
        with self.state.lock:
            self._apps[appid] = _App(appid, key, set(templates), raw_aes)

    def set_identity(self, user: str, name: str | None = None, cert_no: str | None = None,
                     certified: bool = True) -> None:
        """The user's (user_id or open_id) real-name certification; ``certified=False`` makes them
        uncertified (``is_certified`` = F)."""
        with self.state.lock:
            found = self._identities.setdefault(user, _Identity())
            found.name, found.cert_no, found.certified = name, cert_no, certified

    def set_phone(self, user: str, phone: str | None) -> None:
        """The mobile number bound to the user's Alipay account."""
        with self.state.lock:
            self._identities.setdefault(user, _Identity()).phone = phone

    def phone_response(self, user: str, appid: str | None = None, *, refused: bool = False) -> str:
        """``res.response`` of ``my.getPhoneNumber`` for ``user``: JSON text whose ``response`` is the
        AES-encrypted ``{"code","msg","mobile"}`` and whose ``sign`` is RSA2 over the ciphertext in
        double quotes, as Alipay's server-side samples verify it. ``refused``: the user said no."""
        with self.state.lock:
            app = self._apps[self._default_appid(appid)]
            if app.aes_key is None:
                raise ValueError(f"Alipay app {app.appid!r} has no aes_key (接口内容加密) registered")
            phone = self._identities.get(user, _Identity()).phone
            if refused or not phone:
                inner = {"code": "40006", "msg": "Insufficient Permissions",
                         "subCode": "isv.insufficient-isv-permissions", "subMsg": "用户未授权手机号"}
            else:
                inner = {"code": "10000", "msg": "Success", "mobile": phone}
            ciphertext = aes_encrypt(app.aes_key, json.dumps(inner, ensure_ascii=False))
            return json.dumps({"response": ciphertext, "sign": self.sign('"' + ciphertext + '"'),
                               "sign_type": "RSA2", "encrypt_type": "AES", "charset": "UTF-8"})

    def _default_appid(self, appid: str | None) -> str:
        if appid is not None:
            if appid not in self._apps:
                raise ValueError(f"Alipay app {appid!r} is not registered")
            return appid
        if len(self._apps) != 1:
            raise ValueError("register exactly one Alipay app, or name the appid")
        return next(iter(self._apps))

    def appids(self) -> list[str]:
        """Ids of the registered apps."""
        with self.state.lock:
            return sorted(self._apps)

    def issue_auth_code(
        self,
        user_id: str | None = None,
        open_id: str | None = None,
        union_id: str | None = None,
        appid: str | None = None,
    ) -> str:
        """What ``my.getAuthCode`` would give the mini-program. With neither id, a user_id is made up."""
        if user_id is None and open_id is None:
            user_id = "2088" + "".join(secrets.choice("0123456789") for _ in range(12))
        with self.state.lock:
            code = secrets.token_hex(16)
            self._codes[code] = _AuthCode(
                self._default_appid(appid), user_id, open_id, union_id, self.state.clock.now()
            )
            return code

    def grant_consent(
        self, user: str, template_id: str, mode: str = "one_time", count: int = 1
    ) -> dict[str, Any]:
        """The user (user_id or open_id) accepts ``template_id`` in ``my.requestSubscribeMessage``."""
        if mode not in ("one_time", "long_term"):
            raise ValueError("mode must be 'one_time' or 'long_term'")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self.state.lock:
            consent = self._consents.setdefault((user, template_id), _Consent())
            if mode == "long_term":
                consent.long_term = True
            else:
                consent.credits += count
            return consent.to_dict()

    def revoke_consent(self, user: str, template_id: str) -> None:
        """The user turns ``template_id`` off; consent of both kinds is gone."""
        with self.state.lock:
            self._consents.pop((user, template_id), None)

    def reset(self) -> None:
        """Forget auth codes, refresh tokens and consent; registered apps stay."""
        with self.state.lock:
            self._codes.clear()
            self._refresh_tokens.clear()
            self._consents.clear()
            self._identities.clear()
            self._user_tokens.clear()

    def consent(self, user: str, template_id: str) -> dict[str, Any]:
        """``{"one_time_credits": n, "long_term": bool}`` for this user and template."""
        with self.state.lock:
            return self._consents.get((user, template_id), _Consent()).to_dict()

    # --- signing ------------------------------------------------------------------------------

    def sign(self, text: str) -> str:
        """Base64 RSA-SHA256 (PKCS#1 v1.5) signature with the emulator's key."""
        signature = self._private_key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(signature).decode()

    def signed_body(self, response_type: str, payload: dict[str, Any]) -> str:
        """``{"<type>": payload, "sign": ...}`` with the signature over the exact payload bytes.

        python-alipay-sdk cuts the payload out of the raw text by counting braces, so string
        values must not contain unbalanced ``{``/``}`` (UPSTREAM §4).
        """
        inner = json.dumps(payload, ensure_ascii=False)
        return '{"' + response_type + '":' + inner + ',"sign":"' + self.sign(inner) + '"}'

    def _error_text(self, response_type: str, error: AlipayError) -> str:
        key = "error_response" if error.top_level else response_type
        if error.signed:
            return self.signed_body(key, error.payload())
        return json.dumps({key: error.payload()}, ensure_ascii=False)

    def fault_text(self, method: str, code: str, sub_code: str | None, msg: str | None) -> str:
        """A signed business failure for an injected fault."""
        response_type = method.replace(".", "_") + "_response"
        payload = {"code": code, "msg": msg or _MSG.get(code, "Business Failed")}
        sub_code = sub_code or _DEFAULT_SUB_CODE.get(code)
        if sub_code:
            payload.update(sub_code=sub_code, sub_msg=sub_code)
        return self.signed_body(response_type, payload)

    # --- gateway ------------------------------------------------------------------------------

    def handle(self, params: dict[str, str]) -> str:
        """Answer one gateway call: check the common params and signature, then dispatch on ``method``."""
        method = params.get("method") or ""
        response_type = method.replace(".", "_") + "_response" if method else "error_response"
        try:
            with self.state.lock:
                self._check_gateway(params)
                if method == OAUTH_METHOD:
                    return self.signed_body(response_type, self._oauth_token(params))
                if method == TEMPLATE_SEND_METHOD:
                    return self.signed_body(response_type, self._template_send(params))
                if method == USER_INFO_METHOD:
                    return self.signed_body(response_type, self._user_info(params))
            raise _gateway_error("40002", "isv.invalid-method", "不存在的方法名")
        except AlipayError as exc:
            return self._error_text(response_type, exc)

    def _check_gateway(self, params: dict[str, str]) -> None:
        for name in _REQUIRED_PARAMS:
            if not params.get(name):
                sub = "signature" if name == "sign" else name.replace("_", "-")
                raise _gateway_error("40001", f"isv.missing-{sub}", f"缺少{name}参数")
        app = self._apps.get(params["app_id"])
        if app is None:
            raise _gateway_error("40002", "isv.invalid-app-id", "无效的AppID参数")
        if params["sign_type"] != "RSA2":
            raise _gateway_error("40002", "isv.invalid-signature-type", "无效的签名类型")
        if params["charset"].lower() not in ("utf-8", "utf8"):
            raise _gateway_error("40002", "isv.invalid-charset", "字符集错误")
        try:
            app.public_key.verify(
                base64.b64decode(params["sign"], validate=True),
                canonical_string(params).encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (InvalidSignature, binascii.Error, ValueError):
            raise _gateway_error(
                "40002", "isv.invalid-signature", "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配"
            ) from None
        if params["method"] not in ALIPAY_APIS:
            raise _gateway_error("40002", "isv.invalid-method", "不存在的方法名")

    def _oauth_token(self, params: dict[str, str]) -> dict[str, Any]:
        # grant_type and code are top-level params here, not biz_content.
        # https://opendocs.alipay.com/open/02ailc (alipay.system.oauth.token)
        now = self.state.clock.now()
        grant_type = params.get("grant_type")
        if grant_type == "authorization_code":
            entry = self._codes.get(params.get("code") or "")
            if (
                entry is None
                or entry.used
                or entry.appid != params["app_id"]
                or now - entry.issued_at >= AUTH_CODE_TTL
            ):
                # Reported as a top-level error_response, signed [src docstring][comm].
                raise AlipayError("40002", "isv.code-invalid", "授权码code无效", top_level=True)
            entry.used = True
        elif grant_type == "refresh_token":
            entry = self._refresh_tokens.pop(params.get("refresh_token") or "", None)
            if entry is None or entry.appid != params["app_id"]:
                raise AlipayError(
                    "40002", "isv.refresh-token-invalid", "刷新令牌refresh_token无效", top_level=True
                )
        else:
            raise AlipayError("40002", "isv.grant-type-invalid", "grant_type参数不正确", top_level=True)
        refresh_token = "authusrB" + secrets.token_hex(16)
        self._refresh_tokens[refresh_token] = entry
        access_token = "authusrB" + secrets.token_hex(16)
        self._user_tokens[access_token] = (entry, now + USER_TOKEN_TTL)
        # Successful replies carry no code/msg for this API [comm]; user_id is absent in OpenID mode.
        reply: dict[str, Any] = {
            "access_token": access_token,
            "expires_in": USER_TOKEN_TTL,
            "refresh_token": refresh_token,
            "re_expires_in": REFRESH_TOKEN_TTL,
            "auth_start": datetime.fromtimestamp(now, _BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
        }
        for name in ("user_id", "open_id", "union_id"):
            if getattr(entry, name):
                reply[name] = getattr(entry, name)
        return reply

    def _user_info(self, params: dict[str, str]) -> dict[str, Any]:
        # https://opendocs.alipay.com/open/02aily (alipay.user.info.share): the user token is the
        # top-level auth_token; the certification fields need the app's sensitive-field grant.
        found = self._user_tokens.get(params.get("auth_token") or "")
        if found is None or found[0].appid != params["app_id"] or self.state.clock.now() >= found[1]:
            raise AlipayError("20001", "aop.invalid-auth-token", "无效的访问令牌")
        entry = found[0]
        user = entry.user_id or entry.open_id or ""
        identity = self._identities.get(user, _Identity())
        reply: dict[str, Any] = {"code": "10000", "msg": "Success", "nick_name": "沙箱用户",
                                 "is_certified": "T" if identity.certified and identity.cert_no else "F"}
        for name in ("user_id", "open_id"):
            if getattr(entry, name):
                reply[name] = getattr(entry, name)
        if identity.cert_no:
            reply.update(user_name=identity.name, cert_type="0", cert_no=identity.cert_no)
        return reply

    def _template_send(self, params: dict[str, str]) -> dict[str, Any]:
        # https://opendocs.alipay.com/mini/02cth2 (alipay.open.app.mini.templatemessage.send)
        try:
            biz = json.loads(params.get("biz_content") or "{}")
        except ValueError:
            raise AlipayError("40002", "isv.invalid-parameter", "biz_content不是合法的JSON") from None
        to_user_id, to_open_id = biz.get("to_user_id"), biz.get("to_open_id")
        user = to_user_id or to_open_id
        if not user or not biz.get("user_template_id"):
            raise AlipayError("40001", "isv.missing-parameter", "缺少to_user_id/to_open_id或user_template_id")
        template_id = biz["user_template_id"]
        if template_id not in self._apps[params["app_id"]].templates:
            raise AlipayError("40004", "USER_TEMPLATE_ILLEGAL", "模板非法")
        values = self._check_data(biz.get("data"))
        consent = self._consents.get((user, template_id))
        if consent is None or not (consent.long_term or consent.credits > 0):
            raise AlipayError("40004", NO_CONSENT_SUB_CODE, "用户未订阅该模板消息")
        if not consent.long_term:
            consent.credits -= 1
        self.state.record(
            SentMessage(
                platform="alipay",
                msgid=self.state.new_msgid(),
                appid=params["app_id"],
                to=user,
                template_id=template_id,
                data=values,
                page=biz.get("page"),
                sent_at=self.state.clock.now(),
                extra={"to_field": "to_user_id" if to_user_id else "to_open_id"},
            )
        )
        return {"code": "10000", "msg": "Success"}

    @staticmethod
    def _check_data(raw: Any) -> dict[str, str]:
        # data is a JSON *string* inside biz_content: {"keyword1": {"value": "..."}, ...}.
        try:
            data = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            data = None
        if not isinstance(data, dict) or not data:
            raise AlipayError("40002", "isv.invalid-parameter", "data参数格式错误")
        values: dict[str, str] = {}
        for key, item in data.items():
            value = item.get("value") if isinstance(item, dict) else None
            if not isinstance(value, str):
                raise AlipayError("40002", "isv.invalid-parameter", f"data.{key}格式错误")
            if len(value) > KEYWORD_MAX_CHARS:
                raise AlipayError("40004", "USER_KEYWORD_LENGTH_ERROR", "关键词超长")
            values[key] = value
        return values


def create_blueprint(emulator: AlipayEmulator) -> Blueprint:
    """``/gateway.do`` for GET query strings (python-alipay-sdk) and POST forms (other SDKs)."""
    bp = Blueprint("alipay", __name__)
    state = emulator.state

    @bp.route("/gateway.do", methods=["GET", "POST"])
    def gateway():
        if state.is_down("alipay"):
            return Response("Bad Gateway", status=502)
        params = {**request.args.to_dict(), **request.form.to_dict()}
        method = params.get("method", "")
        fault = state.take_fault(method) if method in ALIPAY_APIS else None
        if fault is not None:
            if fault.delay:
                state.wait(fault.delay)
            if fault.http_status:
                return Response("injected fault", status=fault.http_status)
            if fault.errcode is not None:
                text = emulator.fault_text(method, str(fault.errcode), fault.sub_code, fault.errmsg)
                return Response(text, content_type="application/json; charset=utf-8")
        return Response(emulator.handle(params), content_type="application/json; charset=utf-8")

    return bp
