"""Emulated WeChat server API for mini-programs: access tokens, code2Session, subscribe messages,
the phone-number button (getuserphonenumber) and the city-service real-name check (checkrealnameinfo).

It checks what the real platform checks (UPSTREAM §1): appid/secret, single-use login codes that
live 5 minutes, expiring and superseded access tokens, per-template consent, the value limits of
each data key. Replies are always HTTP 200 JSON with ``errcode``/``errmsg`` as WeChat sends them.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, jsonify, request

from sandbox.push import PushDispatcher, change_event, popup_event, sent_event
from sandbox.state import SandboxState, SentMessage

TOKEN_TTL = 7200
# /cgi-bin/token keeps the previous token valid for about 5 minutes after a new fetch.
# https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-access-token/getAccessToken.html
TOKEN_OVERLAP = 300
# stable_token in normal mode hands out a new token only in the last 5 minutes of the old one.
# https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-access-token/getStableAccessToken.html
STABLE_RENEW_BEFORE = 300
LOGIN_CODE_TTL = 300
# The phone-button code and the real-name consent code work once, within 5 minutes (UPSTREAM §1.3,
# §1.3a; the real-name code's lifetime is not documented, 5 minutes like the others is assumed).
PHONE_CODE_TTL = 300
REALNAME_CODE_TTL = 300

ERRMSG = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40013: "invalid appid",
    40014: "invalid access_token",
    40029: "invalid code",
    40037: "invalid template_id",
    40125: "invalid appsecret",
    40163: "code been used",
    41001: "access_token missing",
    41002: "appid missing",
    41004: "appsecret missing",
    41008: "missing code",
    41030: "invalid page",
    42001: "access_token expired",
    43101: "user refuse to accept the msg",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit  mustslower  retry next minute",
    47001: "data format error",
    47003: "argument invalid!",
}

MINIPROGRAM_STATES = ("developer", "trial", "formal")
LANGS = ("zh_CN", "en_US", "zh_HK", "zh_TW")


def error_body(errcode: int, errmsg: str | None = None) -> dict[str, Any]:
    """A WeChat error reply; real ``errmsg`` values end with a request id."""
    rid = "-".join(secrets.token_hex(4) for _ in range(3))
    return {"errcode": errcode, "errmsg": f"{errmsg or ERRMSG.get(errcode, 'error')} rid: {rid}"}


class WeChatError(Exception):
    """A business error the emulator answers with ``{"errcode", "errmsg"}``."""

    def __init__(self, errcode: int, errmsg: str | None = None):
        super().__init__(errcode, errmsg)
        self.errcode = errcode
        self.errmsg = errmsg

    def body(self) -> dict[str, Any]:
        return error_body(self.errcode, self.errmsg)


# --- subscribe-message data limits (UPSTREAM §1.4) ---------------------------------------------
# https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-message-management/subscribe-message/sendMessage.html

_HANZI = "\u3400-\u4dbf\u4e00-\u9fff"
_DATE = r"\d{4}(?:年\d{1,2}月\d{1,2}日|-\d{1,2}-\d{1,2}|/\d{1,2}/\d{1,2})"
_CLOCK = r"\d{1,2}:\d{2}(?::\d{2})?"
_TIME_POINT = rf"(?:{_DATE}\s*)?{_CLOCK}"
_DATE_POINT = rf"{_DATE}(?:\s*{_CLOCK})?"


def _range(point: str) -> re.Pattern[str]:
    return re.compile(rf"{point}(?:\s*~\s*{point})?")


_PATTERNS: dict[str, re.Pattern[str]] = {
    "number": re.compile(r"\d+(?:\.\d+)?"),
    "letter": re.compile(r"[A-Za-z]{1,32}"),
    "symbol": re.compile(r"[^\w\s]{1,5}"),
    "character_string": re.compile(r"[\x21-\x7e]{1,32}"),
    "time": _range(_TIME_POINT),
    "date": _range(_DATE_POINT),
    "amount": re.compile(r"[¥￥$€£]?\d+(?:\.\d+)?元?"),
    "phone_number": re.compile(r"[0-9+\-() ]{1,17}"),
    "car_number": re.compile(rf"[{_HANZI}A-Za-z0-9]{{1,8}}"),
    "phrase": re.compile(rf"[{_HANZI}]{{1,5}}"),
}
# "name": up to 10 Hanzi, or up to 20 letters; mixed text counts as a Chinese name. The doc does
# not mention symbols; "*" and "·" (masked and minority names) are accepted here [unv].
_NAME_CHINESE = re.compile(rf"[{_HANZI}A-Za-z*·]{{1,10}}")
_NAME_LATIN = re.compile(r"[A-Za-z*. ]{1,20}")
_KEY = re.compile(r"([a-z_]+?)(\d+)")


def data_value_valid(key: str, value: Any) -> bool:
    """Whether ``value`` fits the limits WeChat applies to keys with ``key``'s prefix (e.g. thing1)."""
    match = _KEY.fullmatch(key)
    if not match or not isinstance(value, str) or not value:
        return False
    kind = match.group(1)
    if kind == "thing":
        return len(value) <= 20
    if kind == "number":
        return bool(_PATTERNS["number"].fullmatch(value)) and sum(c.isdigit() for c in value) <= 32
    if kind == "amount":
        return bool(_PATTERNS["amount"].fullmatch(value)) and sum(c.isdigit() for c in value) <= 10
    if kind == "name":
        return bool(_NAME_CHINESE.fullmatch(value) or _NAME_LATIN.fullmatch(value))
    if kind == "enum":
        # Enumerated values are defined per template, which the emulator does not know.
        return len(value) <= 20
    pattern = _PATTERNS.get(kind)
    return bool(pattern and pattern.fullmatch(value))


# --- state -------------------------------------------------------------------------------------


@dataclass
class _App:
    appid: str
    secret: str
    templates: set[str]
    pages: set[str] | None = None
    plain_token: _Token | None = None
    stable_token: _Token | None = None


@dataclass
class _Token:
    value: str
    appid: str
    expires_at: float
    stale_at: float | None = None


@dataclass
class _LoginCode:
    appid: str
    openid: str
    issued_at: float
    used: bool = False


@dataclass
class _User:
    appid: str
    openid: str
    unionid: str | None = None
    session_key: str = field(default_factory=lambda: base64.b64encode(secrets.token_bytes(16)).decode())
    # WeChat Pay real-name identity (name, ID number); None: the user has none (V_OP_NA).
    realname: tuple[str, str] | None = None
    phone: str | None = None


@dataclass
class _UserCode:
    """A single-use code WeChat hands the mini-program for one user (phone button, real-name page)."""

    appid: str
    openid: str
    issued_at: float
    used: bool = False


@dataclass
class _Consent:
    credits: int = 0
    long_term: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"one_time_credits": self.credits, "long_term": self.long_term}


class WeChatEmulator:
    """The WeChat side of a Sandbox: control methods plus one handler per emulated API."""

    def __init__(self, state: SandboxState):
        self.state = state
        self.push: PushDispatcher | None = None
        self._apps: dict[str, _App] = {}
        self._tokens: dict[str, _Token] = {}
        self._codes: dict[str, _LoginCode] = {}
        self._users: dict[str, _User] = {}
        self._consents: dict[tuple[str, str], _Consent] = {}
        self._phone_codes: dict[str, _UserCode] = {}
        self._realname_codes: dict[str, _UserCode] = {}

    # --- control ------------------------------------------------------------------------------

    def register_app(
        self,
        appid: str,
        secret: str,
        templates: list[str] | tuple[str, ...] = (),
        pages: list[str] | None = None,
    ) -> None:
        """Add (or replace) a mini-program with its AppSecret, template ids and optional page list."""
        if not appid or not secret:
            raise ValueError("appid and secret are required")
        with self.state.lock:
            self._apps[appid] = _App(
                appid, secret, set(templates), None if pages is None else {p.lstrip("/") for p in pages}
            )

    def _default_app(self, appid: str | None) -> _App:
        if appid is not None:
            if appid not in self._apps:
                raise ValueError(f"WeChat app {appid!r} is not registered")
            return self._apps[appid]
        if len(self._apps) != 1:
            raise ValueError("register exactly one WeChat app, or name the appid")
        return next(iter(self._apps.values()))

    def default_appid(self, appid: str | None = None) -> str:
        """``appid`` if registered, else the only registered app's id."""
        with self.state.lock:
            return self._default_app(appid).appid

    def appids(self) -> list[str]:
        """Ids of the registered mini-programs."""
        with self.state.lock:
            return sorted(self._apps)

    def _user(self, openid: str, appid: str | None, unionid: str | None = None) -> _User:
        user = self._users.get(openid)
        if user is None:
            app = self._default_app(appid)
            user = self._users[openid] = _User(app.appid, openid, unionid)
        elif unionid:
            user.unionid = unionid
        return user

    def issue_login_code(self, openid: str, unionid: str | None = None, appid: str | None = None) -> str:
        """What ``wx.login()`` would hand the mini-program for this user: a code for code2Session."""
        if not openid:
            raise ValueError("openid is required")
        with self.state.lock:
            user = self._user(openid, appid, unionid)
            code = secrets.token_urlsafe(24)
            self._codes[code] = _LoginCode(user.appid, openid, self.state.clock.now())
            return code

    def set_identity(self, openid: str, name: str | None, id_number: str | None = None) -> None:
        """The user's WeChat Pay real-name identity; ``name=None`` makes the user uncertified (V_OP_NA)."""
        if (name is None) != (id_number is None):
            raise ValueError("give both name and id_number, or neither")
        with self.state.lock:
            self._user(openid, None).realname = None if name is None else (name, id_number.upper())

    def set_phone(self, openid: str, phone: str | None) -> None:
        """The mobile number bound to the user's WeChat account (None: no number)."""
        with self.state.lock:
            self._user(openid, None).phone = phone

    def issue_phone_code(self, openid: str) -> str:
        """What the getPhoneNumber button hands the mini-program after the user agrees."""
        with self.state.lock:
            user = self._user(openid, None)
            if not user.phone:
                raise ValueError("the user has no phone number; set one first")
            code = secrets.token_hex(32)
            self._phone_codes[code] = _UserCode(user.appid, openid, self.state.clock.now())
            return code

    def issue_realname_code(self, openid: str) -> str:
        """What WeChat's real-name consent page returns to the mini-program (``extraData.code``)."""
        with self.state.lock:
            user = self._user(openid, None)
            code = secrets.token_urlsafe(24)
            self._realname_codes[code] = _UserCode(user.appid, openid, self.state.clock.now())
            return code

    def grant_consent(
        self, openid: str, template_id: str, mode: str = "one_time", count: int = 1
    ) -> dict[str, Any]:
        """The user accepts ``template_id`` in ``wx.requestSubscribeMessage`` (one-time: ``count`` times)."""
        if mode not in ("one_time", "long_term"):
            raise ValueError("mode must be 'one_time' or 'long_term'")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self.state.lock:
            user = self._user(openid, None)
            if template_id not in self._apps[user.appid].templates:
                raise ValueError(f"template {template_id!r} is not registered for {user.appid}")
            consent = self._consents.setdefault((openid, template_id), _Consent())
            if mode == "long_term":
                consent.long_term, popups = True, 1
            else:
                consent.credits, popups = consent.credits + count, count
            snapshot = consent.to_dict()
        # Each accept in the popup is one push of its own.
        for _ in range(popups):
            self._emit(popup_event(openid, {template_id: "accept"}))
        return snapshot

    def revoke_consent(self, openid: str, template_id: str) -> None:
        """The user turns the template off in settings: all consent is gone, a change event is pushed."""
        with self.state.lock:
            self._consents.pop((openid, template_id), None)
        self._emit(change_event(openid, [template_id]))

    def reset(self) -> None:
        """Forget users, login codes and consent; registered apps and issued tokens stay."""
        with self.state.lock:
            self._codes.clear()
            self._users.clear()
            self._consents.clear()
            self._phone_codes.clear()
            self._realname_codes.clear()

    def consent(self, openid: str, template_id: str) -> dict[str, Any]:
        """``{"one_time_credits": n, "long_term": bool}`` for this user and template."""
        with self.state.lock:
            return self._consents.get((openid, template_id), _Consent()).to_dict()

    def _emit(self, event: dict[str, Any]) -> None:
        if self.push is not None:
            self.push.submit(event)

    # --- API handlers -------------------------------------------------------------------------

    def _check_app(self, appid: str | None, secret: str | None) -> _App:
        if not appid:
            raise WeChatError(41002)
        app = self._apps.get(appid)
        if app is None:
            raise WeChatError(40013)
        if not secret:
            raise WeChatError(41004)
        if not secrets.compare_digest(secret, app.secret):
            raise WeChatError(40125)
        return app

    def _new_token(self, app: _App, now: float) -> _Token:
        token = _Token(secrets.token_urlsafe(96), app.appid, now + TOKEN_TTL)
        self._tokens[token.value] = token
        return token

    @staticmethod
    def _token_reply(token: _Token, now: float) -> dict[str, Any]:
        return {"access_token": token.value, "expires_in": max(int(token.expires_at - now), 0)}

    def token(self, params: dict[str, str]) -> dict[str, Any]:
        """``GET /cgi-bin/token``: a fresh token each call; the previous one goes stale after an overlap."""
        with self.state.lock:
            if params.get("grant_type") != "client_credential":
                raise WeChatError(40002)
            app = self._check_app(params.get("appid"), params.get("secret"))
            now = self.state.clock.now()
            previous = app.plain_token
            if previous is not None and (
                previous.stale_at is None or previous.stale_at > now + TOKEN_OVERLAP
            ):
                previous.stale_at = now + TOKEN_OVERLAP
            app.plain_token = self._new_token(app, now)
            return self._token_reply(app.plain_token, now)

    def stable_token(self, body: Any) -> dict[str, Any]:
        """``POST /cgi-bin/stable_token``: the same token until its last 5 minutes, unless forced."""
        with self.state.lock:
            if not isinstance(body, dict):
                raise WeChatError(47001)
            if body.get("grant_type") != "client_credential":
                raise WeChatError(40002)
            app = self._check_app(body.get("appid"), body.get("secret"))
            now = self.state.clock.now()
            current = app.stable_token
            if body.get("force_refresh") is True:
                # Force mode invalidates the previous stable token at once.
                if current is not None:
                    current.stale_at = now
            elif current is not None and current.expires_at - now > STABLE_RENEW_BEFORE:
                return self._token_reply(current, now)
            app.stable_token = self._new_token(app, now)
            return self._token_reply(app.stable_token, now)

    def _check_token(self, value: str | None) -> _App:
        if not value:
            raise WeChatError(41001)
        token = self._tokens.get(value)
        if token is None:
            raise WeChatError(40001)
        now = self.state.clock.now()
        if now >= token.expires_at:
            raise WeChatError(42001)
        if token.stale_at is not None and now >= token.stale_at:
            raise WeChatError(40001)
        return self._apps[token.appid]

    def jscode2session(self, params: dict[str, str]) -> dict[str, Any]:
        """``GET /sns/jscode2session``: a login code works once, within 5 minutes, for its own app."""
        with self.state.lock:
            app = self._check_app(params.get("appid"), params.get("secret"))
            if params.get("grant_type") != "authorization_code":
                raise WeChatError(40002)
            js_code = params.get("js_code")
            if not js_code:
                raise WeChatError(41008)
            code = self._codes.get(js_code)
            if code is None or code.appid != app.appid:
                raise WeChatError(40029)
            if code.used:
                raise WeChatError(40163)
            if self.state.clock.now() - code.issued_at >= LOGIN_CODE_TTL:
                raise WeChatError(40029)
            code.used = True
            user = self._users[code.openid]
            # A new login rotates the session key.
            user.session_key = base64.b64encode(secrets.token_bytes(16)).decode()
            reply = {"openid": user.openid, "session_key": user.session_key}
            if user.unionid:
                reply["unionid"] = user.unionid
            return reply

    def subscribe_send(self, access_token: str | None, body: Any) -> dict[str, Any]:
        """``POST /cgi-bin/message/subscribe/send``: checks token, user, template, page, data, consent."""
        with self.state.lock:
            app = self._check_token(access_token)
            if not isinstance(body, dict):
                raise WeChatError(47001)
            openid, template_id = body.get("touser"), body.get("template_id")
            user = self._users.get(openid) if isinstance(openid, str) else None
            if user is None or user.appid != app.appid:
                raise WeChatError(40003)
            if template_id not in app.templates:
                raise WeChatError(40037)
            page = body.get("page")
            if page and app.pages is not None and str(page).split("?", 1)[0].lstrip("/") not in app.pages:
                raise WeChatError(41030)
            for name, allowed in (("miniprogram_state", MINIPROGRAM_STATES), ("lang", LANGS)):
                if name in body and body[name] not in allowed:
                    raise WeChatError(47003, f"argument invalid! {name} invalid")
            values = self._check_data(body.get("data"))
            consent = self._consents.get((openid, template_id))
            if consent is None or not (consent.long_term or consent.credits > 0):
                raise WeChatError(43101)
            if not consent.long_term:
                consent.credits -= 1
            msgid = self.state.new_msgid()
            self.state.record(
                SentMessage(
                    platform="wechat",
                    msgid=msgid,
                    appid=app.appid,
                    to=openid,
                    template_id=template_id,
                    data=values,
                    page=page,
                    sent_at=self.state.clock.now(),
                    extra={
                        "miniprogram_state": body.get("miniprogram_state", "formal"),
                        "lang": body.get("lang", "zh_CN"),
                    },
                )
            )
        self._emit(sent_event(openid, [(template_id, msgid)]))
        return {"errcode": 0, "errmsg": "ok", "msgid": int(msgid)}

    def _take_code(self, codes: dict[str, _UserCode], value: Any, app: _App, ttl: float) -> _UserCode:
        if not isinstance(value, str) or not value:
            raise WeChatError(41008)
        code = codes.get(value)
        if code is None or code.appid != app.appid or self.state.clock.now() - code.issued_at >= ttl:
            raise WeChatError(40029)
        if code.used:
            raise WeChatError(40163)
        code.used = True
        return code

    def get_user_phone_number(self, access_token: str | None, body: Any) -> dict[str, Any]:
        """``POST /wxa/business/getuserphonenumber``: token, then a single-use 5-minute phone code."""
        with self.state.lock:
            app = self._check_token(access_token)
            if not isinstance(body, dict):
                raise WeChatError(47001)
            code = self._take_code(self._phone_codes, body.get("code"), app, PHONE_CODE_TTL)
            if body.get("openid") not in (None, code.openid):
                raise WeChatError(40003)
            phone = self._users[code.openid].phone or ""
            return {"errcode": 0, "errmsg": "ok", "phone_info": {
                "phoneNumber": phone, "purePhoneNumber": phone, "countryCode": "86",
                "watermark": {"timestamp": int(self.state.clock.now()), "appid": app.appid}}}

    def check_realname_info(self, access_token: str | None, body: Any) -> dict[str, Any]:
        """``POST /intp/realname/checkrealnameinfo``: compares name and ID number with the user's
        WeChat Pay real-name identity. Only ``V_OP_NM_MA`` + ``V_NM_ID_MA`` proves an identity."""
        with self.state.lock:
            app = self._check_token(access_token)
            if not isinstance(body, dict):
                raise WeChatError(47001)
            name, cred_id = body.get("real_name"), body.get("cred_id")
            if not (isinstance(name, str) and name and isinstance(cred_id, str) and cred_id):
                raise WeChatError(47001)
            if str(body.get("cred_type")) != "1":
                raise WeChatError(47001)
            code = self._take_code(self._realname_codes, body.get("code"), app, REALNAME_CODE_TTL)
            if body.get("openid") != code.openid:
                raise WeChatError(40003)
            realname = self._users[code.openid].realname
            pair = (name, cred_id.upper())
            known = {u.realname for u in self._users.values() if u.realname}
            if realname is None:
                verify_openid = "V_OP_NA"
            else:
                verify_openid = "V_OP_NM_MA" if realname[0] == name else "V_OP_NM_UM"
            verify_real_name = "V_NM_ID_MA" if pair == realname or pair in known else "V_NM_ID_UM"
            return {"errcode": 0, "errmsg": "ok", "verify_openid": verify_openid,
                    "verify_real_name": verify_real_name}

    @staticmethod
    def _check_data(data: Any) -> dict[str, str]:
        if not isinstance(data, dict) or not data:
            raise WeChatError(47003, "argument invalid! data invalid")
        values: dict[str, str] = {}
        for key, item in data.items():
            value = item.get("value") if isinstance(item, dict) else None
            if not data_value_valid(key, value):
                raise WeChatError(47003, f"argument invalid! data.{key}.value invalid")
            values[key] = value
        return values


def create_blueprint(emulator: WeChatEmulator) -> Blueprint:
    """Routes at the paths of ``https://api.weixin.qq.com``, with fault injection and "down" mode."""
    bp = Blueprint("wechat", __name__)
    state = emulator.state

    @bp.before_request
    def refuse_when_down() -> Response | None:
        if state.is_down("wechat"):
            return Response("Bad Gateway", status=502)
        return None

    def answer(api: str, handler: Callable[[], dict[str, Any]]) -> Response:
        fault = state.take_fault(api)
        if fault is not None:
            if fault.delay:
                state.wait(fault.delay)
            if fault.http_status:
                return Response("injected fault", status=fault.http_status)
            if fault.errcode is not None:
                return jsonify(error_body(int(fault.errcode), fault.errmsg))
        try:
            return jsonify(handler())
        except WeChatError as exc:
            return jsonify(exc.body())

    @bp.get("/cgi-bin/token")
    def token():
        return answer("wechat.token", lambda: emulator.token(request.args.to_dict()))

    @bp.post("/cgi-bin/stable_token")
    def stable_token():
        # wechatpy and many clients POST JSON without a Content-Type header.
        return answer(
            "wechat.stable_token", lambda: emulator.stable_token(request.get_json(force=True, silent=True))
        )

    @bp.get("/sns/jscode2session")
    def jscode2session():
        return answer("wechat.jscode2session", lambda: emulator.jscode2session(request.args.to_dict()))

    @bp.post("/wxa/business/getuserphonenumber")
    def getuserphonenumber():
        return answer("wechat.getuserphonenumber", lambda: emulator.get_user_phone_number(
            request.args.get("access_token"), request.get_json(force=True, silent=True)))

    @bp.post("/intp/realname/checkrealnameinfo")
    def checkrealnameinfo():
        return answer("wechat.checkrealnameinfo", lambda: emulator.check_realname_info(
            request.args.get("access_token"), request.get_json(force=True, silent=True)))

    @bp.post("/cgi-bin/message/subscribe/send")
    def subscribe_send():
        return answer(
            "wechat.subscribe_send",
            lambda: emulator.subscribe_send(
                request.args.get("access_token"), request.get_json(force=True, silent=True)
            ),
        )

    return bp
