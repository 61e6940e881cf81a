"""Sign-in from the WeChat and Alipay mini-programs, refresh, logout."""

from __future__ import annotations

from app.envelope import Blueprint
from app.services import auth
from app.web import client_ip, domain, now, principal, rate_limited, session, user_required
from miniprogram_api.schemas import AlipayLoginSchema, RefreshSchema, TokenPairSchema, WeChatLoginSchema

bp = Blueprint("auth", __name__, description="Sign-in, token refresh and logout")


@bp.post("/wechat")
@rate_limited("login")
@bp.arguments(WeChatLoginSchema)
@bp.response(200, TokenPairSchema)
def sign_in_wechat(body):
    """Sign in with a wx.login code."""
    d = domain()
    return auth.sign_in_with_wechat(session(), d.wechat, d.pii, body["code"], d.token_settings, now(), client_ip())


@bp.post("/alipay")
@rate_limited("login")
@bp.arguments(AlipayLoginSchema)
@bp.response(200, TokenPairSchema)
def sign_in_alipay(body):
    """Sign in with a my.getAuthCode auth code."""
    d = domain()
    return auth.sign_in_with_alipay(session(), d.alipay, body["auth_code"], d.token_settings, now(), client_ip())


@bp.post("/refresh")
@rate_limited("login")
@bp.arguments(RefreshSchema)
@bp.response(200, TokenPairSchema)
def refresh(body):
    """Rotate a refresh token (reusing an old one revokes the whole chain)."""
    return auth.refresh_tokens(session(), body["refresh_token"], domain().token_settings, now(), client_ip())


@bp.post("/logout")
@user_required
@bp.response(204)
def logout():
    """Revoke this access token and its whole refresh chain."""
    auth.logout(session(), principal(), now())
