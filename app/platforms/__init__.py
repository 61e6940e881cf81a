"""Thin adapters for the WeChat and Alipay server APIs (no Flask; plain config values in).

Gateways live in ``app.platforms.wechat`` and ``app.platforms.alipay``. A failed push raises
``PlatformError``, whose ``kind`` tells the notify worker what to do: retry later (transient),
refresh the access token (token), or record a final failure (permanent).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

TRANSIENT = "transient"
TOKEN = "token"
PERMANENT = "permanent"

# Codes we assign to failures that never reached the platform or got no usable reply.
TRANSPORT_CODES = frozenset({"timeout", "network", "http_5xx", "bad_response"})

# https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/ (全局返回码): -1 system busy,
# 45009 daily quota, 45011 per-minute limit; 40001/40014/42001 invalid, malformed, expired token.
_WECHAT_TRANSIENT = frozenset({"-1", "45009", "45011"}) | TRANSPORT_CODES
_WECHAT_TOKEN = frozenset({"40001", "40014", "42001"})


def classify(platform: str, code: str) -> str:
    """The kind of a failure with this platform code (WeChat errcode, Alipay sub_code or code)."""
    if platform == "wechat":
        if code in _WECHAT_TRANSIENT:
            return TRANSIENT
        return TOKEN if code in _WECHAT_TOKEN else PERMANENT
    if platform == "alipay":
        # 20000 / isp.* are Alipay's own "service unavailable" errors; everything else is a
        # business or request error that repeats if retried.
        if code in TRANSPORT_CODES or code == "20000" or code.startswith("isp."):
            return TRANSIENT
        return PERMANENT
    raise ValueError(f"unknown platform {platform!r}")


class PlatformError(Exception):
    """A platform call failed; ``code`` is the upstream code or timeout/network/http_5xx/bad_response."""

    def __init__(self, platform: str, code: str, message: str = "", kind: str | None = None):
        super().__init__(f"{platform} {code}: {message}")
        self.platform = platform
        self.code = str(code)
        self.message = message
        self.kind = kind or classify(platform, self.code)

    @property
    def transient(self) -> bool:
        """Whether retrying later may succeed."""
        return self.kind == TRANSIENT

    def __repr__(self) -> str:
        return f"PlatformError({self.platform!r}, {self.code!r}, {self.message!r}, kind={self.kind!r})"


def platform_id(value: object, max_length: int) -> str | None:
    """A platform identifier (openid, unionid, Alipay user_id/open_id, session key) as the service
    stores it: a non-empty string of at most ``max_length`` printable ASCII characters without
    spaces, else None. A platform may answer garbage; what is not an id is never stored or compared."""
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        return None
    return value if value.isascii() and value.isprintable() and " " not in value else None


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` points at this machine (e.g. the emulator), which no proxy should see."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
