"""WeChat mini-program server API over wechatpy 1.8.18: login (code2Session), subscribe messages,
the phone-number button (getuserphonenumber) and the city-service real-name check (R21).

wechatpy needs some help (UPSTREAM §2, §6): every base URL is redirected so the emulator can
stand in for api.weixin.qq.com, the access token comes from ``/cgi-bin/stable_token`` (JSON POST),
``auto_retry`` is off because its token retry recurses without bound, and every call has a timeout.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from wechatpy import WeChatClient
from wechatpy.exceptions import WeChatClientException
from wechatpy.session import SessionStorage

from app.errors import Forbidden, LoginCodeInvalid, RateLimited, UpstreamUnavailable
from app.platforms import TOKEN, PlatformError, is_loopback_url, platform_id

logger = logging.getLogger(__name__)

DEFAULT_API_BASE_URL = "https://api.weixin.qq.com/"
# Tokens are cached a little shorter than WeChat says they live, so a cached token is never
# used right at its end (clock skew, requests in flight).
_TOKEN_EARLY_REFRESH = 300
_SECRET_PARAM = re.compile(r"((?:secret|access_token)=)[^&\s'\"]+")


def _redact(text: object) -> str:
    """``text`` (often a requests error quoting the URL) without AppSecret or access token values."""
    return _SECRET_PARAM.sub(r"\1***", str(text))


class TTLMemoryStorage(SessionStorage):
    """In-process wechatpy session storage that honours ``ttl`` (``MemoryStorage`` ignores it)."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._data: dict[str, tuple[Any, float | None]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            value, expires_at = self._data.get(key, (default, None))
            if expires_at is not None and self._clock() >= expires_at:
                del self._data[key]
                return default
            return value

    def set(self, key: str, value: Any, ttl: int | None = None) -> None:
        if value is None:
            return
        with self._lock:
            self._data[key] = (value, None if ttl is None else self._clock() + ttl)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)


def _json_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _StableTokenClient(WeChatClient):
    """``WeChatClient`` whose every URL starts at ``api_base_url`` and whose token is a stable token."""

    def __init__(self, appid: str, secret: str, api_base_url: str, session: SessionStorage, timeout: float):
        super().__init__(appid, secret, session=session, timeout=timeout, auto_retry=False)
        self.api_base_url = api_base_url
        # Relative endpoints of the client and of wxa (whose class attribute wins over the client's).
        self.API_BASE_URL = api_base_url + "cgi-bin/"
        self.wxa.API_BASE_URL = api_base_url
        if is_loopback_url(api_base_url):
            self._http.trust_env = False

    def fetch_access_token(self, force_refresh: bool = False) -> dict[str, Any]:
        """Get a token from ``/cgi-bin/stable_token`` and cache it in the session storage.

        https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-access-token/getStableAccessToken.html
        Unlike ``/cgi-bin/token`` it does not invalidate the token other processes hold.
        """
        body = {
            "grant_type": "client_credential",
            "appid": self.appid,
            "secret": self.secret,
            "force_refresh": force_refresh,
        }
        res = self._http.post(
            self.api_base_url + "cgi-bin/stable_token",
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
            timeout=self.timeout,
        )
        try:
            res.raise_for_status()
        except requests.RequestException as exc:
            raise WeChatClientException(
                None, None, client=self, request=exc.request, response=exc.response
            ) from exc
        result = self._decode_result(res)
        if not isinstance(result, dict):
            raise ValueError("the stable_token reply is not JSON")
        # JSON integers only: int() would also read "０", 0.5, True or "７２００" as a number.
        errcode, expires_in = result.get("errcode", 0), result.get("expires_in", 7200)
        if not (_json_int(errcode) and _json_int(expires_in)):
            raise ValueError("the stable_token reply's errcode or expires_in is not an integer")
        if errcode != 0:
            raise WeChatClientException(
                errcode, result.get("errmsg"), client=self, request=res.request, response=res
            )
        if "access_token" not in result:
            raise ValueError("the stable_token reply has no access_token")
        ttl = max(expires_in - min(_TOKEN_EARLY_REFRESH, expires_in // 10), 1)
        self.session.set(self.access_token_key, result["access_token"], ttl)
        self.expires_at = int(time.time()) + ttl
        return result


@dataclass(frozen=True)
class WeChatSession:
    """What code2Session returns for a user."""

    openid: str
    unionid: str | None
    session_key: str


class WeChatGateway:
    """Login and subscribe messages for one mini-program."""

    def __init__(
        self,
        appid: str,
        secret: str,
        api_base_url: str = DEFAULT_API_BASE_URL,
        token_storage: SessionStorage | None = None,
        timeout: float = 5.0,
    ):
        """``token_storage`` is a wechatpy session storage (``RedisStorage`` to share the token)."""
        self.appid = appid
        self._base = api_base_url if api_base_url.endswith("/") else api_base_url + "/"
        self._client = _StableTokenClient(
            appid, secret, self._base, token_storage or TTLMemoryStorage(), timeout
        )

    def code_to_session(self, code: str) -> WeChatSession:
        """Exchange a ``wx.login()`` code for the user's openid, unionid and session key.

        Raises ``LoginCodeInvalid`` for a bad, used or expired code and ``UpstreamUnavailable``
        when WeChat cannot be reached or fails.
        """
        if not code:
            raise LoginCodeInvalid()
        try:
            # "access_token": None keeps wechatpy from fetching a token code2Session does not need,
            # so a token outage cannot break login (requests drops None params).
            result = self._client.get(
                self._base + "sns/jscode2session",
                params={
                    "appid": self.appid,
                    "secret": self._client.secret,
                    "js_code": code,
                    "grant_type": "authorization_code",
                    "access_token": None,
                },
            )
        except WeChatClientException as exc:
            raise self._login_error(exc) from exc
        except requests.RequestException as exc:
            logger.warning("wechat code2Session unreachable: %s", _redact(exc))
            raise UpstreamUnavailable() from exc
        # Every field is checked, not only whether it is there: an openid that is an object, a
        # number or longer than the column is garbage, not a user (users.wechat_openid is 64).
        fields = result if isinstance(result, dict) else {}
        openid, session_key = platform_id(fields.get("openid"), 64), platform_id(fields.get("session_key"), 128)
        unionid = fields.get("unionid") or None
        if openid is None or session_key is None or (unionid is not None and platform_id(unionid, 64) is None):
            # The field names and types only: a reply may carry a session key (a secret) and ids.
            shape = {k: type(v).__name__ for k, v in fields.items()} if fields else type(result).__name__
            logger.error("wechat code2Session returned an unexpected reply: %.300s", shape)
            raise UpstreamUnavailable()
        return WeChatSession(openid, unionid, session_key)

    @staticmethod
    def _login_error(exc: WeChatClientException) -> Exception:
        # https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/user-login/code2Session.html
        if exc.errcode in (40029, 40163):
            return LoginCodeInvalid()
        if exc.errcode == 45011:
            return RateLimited()
        if exc.errcode == 40226:
            return Forbidden("This WeChat account is blocked from signing in.")
        if exc.errcode in (None, -1):
            logger.warning("wechat code2Session failed: %s", exc)
        else:
            # 40013/40125 and the like: our appid or secret is wrong, not the user's fault.
            logger.error("wechat code2Session rejected our request: %s", exc)
        return UpstreamUnavailable()

    def send_subscribe_message(
        self,
        openid: str,
        template_id: str,
        data: dict[str, str],
        page: str | None = None,
        miniprogram_state: str = "formal",
        lang: str = "zh_CN",
    ) -> str:
        """Send one subscribe message and return its msgid; raises ``PlatformError``.

        A token error refreshes the token once and retries once; a second token error is raised.
        """
        payload: dict[str, Any] = {
            "touser": openid,
            "template_id": template_id,
            "data": {key: {"value": value} for key, value in data.items()},
            "miniprogram_state": miniprogram_state,
            "lang": lang,
        }
        if page:
            payload["page"] = page
        try:
            return self._send_once(payload)
        except PlatformError as err:
            if err.kind != TOKEN:
                raise
            logger.info("wechat token rejected (%s); refreshing once", err.code)
            self._refresh_token()
            return self._send_once(payload)

    def _with_token_retry(self, path: str, payload: dict[str, Any]) -> Any:
        """POST ``payload`` with the cached access token; a token error refreshes it once and retries
        once (like the subscribe send). wechatpy 1.8.18 has neither API, so this is the client's own post."""

        def once() -> Any:
            return self._call(lambda: self._client.post(self._base + path, data=payload))

        try:
            return once()
        except PlatformError as err:
            if err.kind != TOKEN:
                raise
            logger.info("wechat token rejected (%s); refreshing once", err.code)
            self._refresh_token()
            return once()

    def get_phone_number(self, code: str, openid: str | None = None) -> str:
        """The user's proven mobile number for a getPhoneNumber-button code (getuserphonenumber).

        https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/user-info/phone-number/getPhoneNumber.html
        With ``openid`` (the signed-in caller's), WeChat answers only for a code that user got: a
        code captured from someone else proves nothing to this caller (40003).
        Raises ``PlatformError``: 40029 (invalid or expired code), 40163 (used), 40003 and the like.
        """
        payload = {"code": code} | ({"openid": openid} if openid else {})
        result = self._with_token_retry("wxa/business/getuserphonenumber", payload)
        info = result.get("phone_info") if isinstance(result, dict) else None
        number = info.get("purePhoneNumber") if isinstance(info, dict) else None
        country = str(info.get("countryCode", "86")) if isinstance(info, dict) else ""
        if not isinstance(number, str) or not number:
            raise PlatformError("wechat", "bad_response", "getuserphonenumber: no purePhoneNumber")
        # WeChat watermarks every answer with the app it was given to: without this app's appid
        # (missing, malformed or another app's) the number is not proven to this mini-program.
        watermark = info.get("watermark")
        if not isinstance(watermark, dict) or watermark.get("appid") != self.appid:
            raise PlatformError("wechat", "bad_response", "getuserphonenumber: no watermark of this app")
        return number if country == "86" else f"+{country}{number}"

    def check_real_name(self, openid: str, name: str, id_number: str, code: str) -> tuple[str, str]:
        """``(verify_openid, verify_real_name)`` of WeChat's real-name check (checkrealnameinfo).

        Only ``("V_OP_NM_MA", "V_NM_ID_MA")`` proves that this WeChat user is the person with this
        name and ID number (UPSTREAM §1.3a). Raises ``PlatformError`` for bad codes and outages.
        """
        payload = {"openid": openid, "real_name": name, "cred_id": id_number, "cred_type": "1", "code": code}
        result = self._with_token_retry("intp/realname/checkrealnameinfo", payload)
        if not isinstance(result, dict):
            raise PlatformError("wechat", "bad_response", "checkrealnameinfo: the reply is not JSON")
        return str(result.get("verify_openid", "")), str(result.get("verify_real_name", ""))

    def _send_once(self, payload: dict[str, Any]) -> str:
        result = self._call(
            lambda: self._client.post(self._base + "cgi-bin/message/subscribe/send", data=payload)
        )
        if not isinstance(result, dict):
            raise PlatformError("wechat", "bad_response", "the reply is not JSON")
        return str(result.get("msgid", ""))

    def access_token(self) -> str:
        """The cached access token, fetched (stable_token) when missing or near its end."""
        return self._call(lambda: self._client.access_token)

    def invalidate_token(self) -> None:
        """Forget the cached token, so the next call fetches one."""
        self._client.session.delete(self._client.access_token_key)
        self._client.expires_at = None

    def _refresh_token(self) -> None:
        rejected = self._client.session.get(self._client.access_token_key)
        self.invalidate_token()
        self._call(self._client.fetch_access_token)
        if rejected and self._client.session.get(self._client.access_token_key) == rejected:
            # Normal mode handed back the token WeChat just refused; only force mode replaces it.
            self._call(lambda: self._client.fetch_access_token(force_refresh=True))

    @staticmethod
    def _call(fn):
        """Run a wechatpy call, turning every failure into ``PlatformError``."""
        try:
            return fn()
        except WeChatClientException as exc:
            if exc.errcode is not None:
                raise PlatformError("wechat", str(exc.errcode), str(exc.errmsg or "")) from exc
            if exc.response is None:
                raise PlatformError("wechat", "network", _redact(exc)) from exc
            status = exc.response.status_code
            raise PlatformError(
                "wechat", "http_5xx" if status >= 500 else "http_4xx", f"HTTP {status}"
            ) from exc
        except requests.Timeout as exc:
            raise PlatformError("wechat", "timeout", _redact(exc)) from exc
        except requests.RequestException as exc:
            raise PlatformError("wechat", "network", _redact(exc)) from exc
        except ValueError as exc:
            # A 200 reply to the token fetch without a token.
            raise PlatformError("wechat", "bad_response", str(exc)) from exc
