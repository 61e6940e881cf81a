"""Build the domain singletons once at start-up, from config, into ``app.extensions["domain"]``.

Everything that is the same for every request — keys, the region policy, the platform
clients — is made here, so no request pays for it and a bad setting fails the start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask

from app.config import ConfigError
from app.institution_auth import build_authenticator
from app.policy import PolicyError, RegionPolicy, load_region_policy
from app.security.pii import PiiCipher
from app.security.pledge_signing import PledgeSigner
from app.services.auth import TokenSettings
from app.services.pledges import PledgeBook, PledgeBookError
from app.services.settlements import build_money_deps
from notify.dispatch import build_notifier


@dataclass
class Domain:
    pii: PiiCipher
    policy: RegionPolicy
    pledge_signer: PledgeSigner
    pledges: PledgeBook
    token_settings: TokenSettings
    wechat: Any
    alipay: Any
    notifier: Any
    config: dict[str, Any]
    # Vouchers, settlements, refunds (MoneyDeps) and institution request signing; set in init_domain.
    money: Any = None
    institutions: Any = None
    # R21: the gateways and Alipay keys the proofs of identity and phone need (app.services.identity).
    platforms: Any = None
    # R12: failed card look-ups per institution (app.services.card_guard).
    card_guard: Any = None


def _policy(app: Flask) -> RegionPolicy:
    try:
        return load_region_policy(Path(app.config["POLICY_DIR"]), app.config["REGION_CODE"])
    except PolicyError as exc:
        raise ConfigError(f"region policy: {exc}") from exc


def _pledges(app: Flask) -> PledgeBook:
    try:
        return PledgeBook.load(app.config["PLEDGE_DIR"])
    except PledgeBookError as exc:
        raise ConfigError(f"pledge texts: {exc}") from exc


def _token_storage(app: Flask) -> Any:
    redis = app.extensions.get("redis")
    if redis is not None:
        from wechatpy.session.redisstorage import RedisStorage

        return RedisStorage(redis, prefix="copay:wechatpy")
    return None


def _platforms(app: Flask) -> tuple[Any, Any]:
    from app.platforms.alipay import AlipayGateway
    from app.platforms.wechat import WeChatGateway

    cfg = app.config
    timeout = cfg["PLATFORM_TIMEOUT_SECONDS"]
    wechat = WeChatGateway(cfg["WECHAT_APPID"], cfg["WECHAT_SECRET"], cfg["WECHAT_API_BASE_URL"],
                           token_storage=_token_storage(app), timeout=timeout)
    alipay = None
    if cfg["ALIPAY_APPID"] and cfg["ALIPAY_APP_PRIVATE_KEY"] and cfg["ALIPAY_PUBLIC_KEY"]:
        alipay = AlipayGateway(cfg["ALIPAY_APPID"], cfg["ALIPAY_APP_PRIVATE_KEY"], cfg["ALIPAY_PUBLIC_KEY"],
                               cfg["ALIPAY_GATEWAY_URL"], timeout=timeout)
    return wechat, alipay


def init_domain(app: Flask) -> None:
    cfg = app.config
    old_keys = [k.strip() for k in cfg["PII_OLD_KEYS"].split(",") if k.strip()]
    try:
        pii = PiiCipher.from_config(cfg["PII_KEY"], old_keys, cfg["PII_INDEX_KEY"])
        signer = PledgeSigner.from_config(cfg["PLEDGE_SIGNING_KEY"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    wechat, alipay = _platforms(app)
    app.extensions["domain"] = Domain(
        pii=pii,
        policy=_policy(app),
        pledge_signer=signer,
        pledges=_pledges(app),
        token_settings=TokenSettings(cfg["ACCESS_TOKEN_TTL_SECONDS"], cfg["REFRESH_TOKEN_TTL_SECONDS"]),
        wechat=wechat,
        alipay=alipay,
        notifier=build_notifier(app),
        config=dict(cfg),
    )
    domain = app.extensions["domain"]
    domain.money = build_money_deps(cfg, pii, domain.policy, domain.notifier)
    domain.institutions = build_authenticator(app, pii)
    domain.platforms = _identity_platforms(cfg, wechat, alipay)
    from app.config import parse_rate
    from app.services.card_guard import CardLookupGuard

    domain.card_guard = CardLookupGuard(app.extensions.get("redis"), parse_rate(cfg["CARD_LOOKUP_FAILURES"]))


def _identity_platforms(cfg: Any, wechat: Any, alipay: Any) -> Any:
    from app.platforms.alipay import decode_aes_key
    from app.services.identity import Platforms

    aes_key = decode_aes_key(cfg["ALIPAY_AES_KEY"]) if cfg.get("ALIPAY_AES_KEY") else None
    return Platforms(wechat=wechat, alipay=alipay, alipay_public_key=cfg.get("ALIPAY_PUBLIC_KEY") or "",
                     alipay_aes_key=aes_key)
