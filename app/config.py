"""Configuration from the environment (SPEC §6).

One ``Config`` class reads the environment once; tests subclass it or pass overrides to
``Config.from_env(...)`` so they never edit ``os.environ``. In development, keys that are not
set are generated once and kept under ``instance/`` (so restarts keep the same data readable);
with ``APP_ENV=production`` a missing secret is a start-up error that names the variable, and
files under ``instance/`` are never used instead.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parent.parent
INSTANCE_DIR = ROOT / "instance"


class ConfigError(RuntimeError):
    """The service cannot start with this configuration."""


def _b64key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


# Secrets that development generates once and keeps in instance/dev-secrets.json.
_GENERATED = {
    "SECRET_KEY": lambda: secrets.token_urlsafe(32),
    "PII_KEY": _b64key,
    "VOUCHER_KEY": _b64key,
    "PLEDGE_SIGNING_KEY": _b64key,
    # R21: Alipay's 接口内容加密 key (AES-128, standard base64) for my.getPhoneNumber.
    "ALIPAY_AES_KEY": lambda: base64.b64encode(secrets.token_bytes(16)).decode(),
}
_REQUIRED_IN_PRODUCTION = (
    "DATABASE_URL", "SECRET_KEY", "PII_KEY", "VOUCHER_KEY", "PLEDGE_SIGNING_KEY",
    "WECHAT_APPID", "WECHAT_SECRET", "ALIPAY_APPID", "ALIPAY_APP_PRIVATE_KEY", "ALIPAY_PUBLIC_KEY",
    # SPEC §6: the blind-index key (never derived from a PII_KEY that rotates), WeChat safe mode, Redis.
    "PII_INDEX_KEY", "WECHAT_AES_KEY", "REDIS_URL",
)


def normalize_database_url(url: str) -> str:
    """Map a plain ``postgresql://`` URL to the psycopg 3 driver (SPEC §6)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def parse_rate(value: str) -> tuple[int, int] | None:
    """``"20/60"`` → (20, 60); ``"off"`` → None (R19)."""
    if value.strip().lower() == "off":
        return None
    try:
        count, seconds = (int(part) for part in value.split("/"))
    except ValueError:
        raise ConfigError(f"rate limit {value!r} must look like COUNT/SECONDS or 'off'") from None
    if count < 1 or seconds < 1:
        raise ConfigError(f"rate limit {value!r} must be positive")
    return count, seconds


@dataclass
class Config:
    """Everything the service reads from its environment, typed."""

    APP_ENV: str = "development"
    DATABASE_URL: str = ""
    REDIS_URL: str | None = None
    SECRET_KEY: str = ""
    PII_KEY: str = ""
    PII_OLD_KEYS: str = ""
    PII_INDEX_KEY: str | None = None
    VOUCHER_KEY: str = ""
    PLEDGE_SIGNING_KEY: str = ""
    REGION_CODE: str = "532600"
    POLICY_DIR: str = str(ROOT / "policies")
    PLEDGE_DIR: str = str(ROOT / "pledges")
    VOUCHER_TTL_SECONDS: int = 120
    DOCUMENT_DIR: str = ""
    MAX_DOCUMENT_BYTES: int = 5 * 1024 * 1024
    # All proof documents one person has uploaded, together (the uploads of staff are not counted).
    DOCUMENT_QUOTA_BYTES_PER_PERSON: int = 50 * 1024 * 1024
    WECHAT_APPID: str = ""
    WECHAT_SECRET: str = ""
    WECHAT_API_BASE_URL: str = "https://api.weixin.qq.com/"
    WECHAT_MSG_TOKEN: str = ""
    WECHAT_AES_KEY: str = ""
    WECHAT_TEMPLATE_DEDUCTION: str = ""
    WECHAT_TEMPLATE_RECEIPT: str = ""
    ALIPAY_APPID: str = ""
    ALIPAY_APP_PRIVATE_KEY: str = ""
    ALIPAY_PUBLIC_KEY: str = ""
    ALIPAY_AES_KEY: str = ""
    ALIPAY_GATEWAY_URL: str = "https://openapi.alipay.com/gateway.do"
    ALIPAY_TEMPLATE_DEDUCTION: str = ""
    ALIPAY_TEMPLATE_RECEIPT: str = ""
    RATE_LIMIT_PER_USER: str = "20/60"
    RATE_LIMIT_PER_IP: str = "300/60"
    # R12: failed social-security card look-ups per institution before card settlements are
    # RATE_LIMITED ("COUNT/SECONDS" or "off").
    CARD_LOOKUP_FAILURES: str = "10/600"
    NOTIFY_RETRY_BASE_SECONDS: int = 30
    ACCESS_TOKEN_TTL_SECONDS: int = 7200
    REFRESH_TOKEN_TTL_SECONDS: int = 30 * 24 * 3600
    # How long a staff API token from ``create-staff`` is accepted (one working day by default).
    STAFF_TOKEN_TTL_SECONDS: int = 12 * 3600
    INSTITUTION_SIGNATURE_WINDOW_SECONDS: int = 300
    PLATFORM_TIMEOUT_SECONDS: float = 5.0
    LOG_LEVEL: str = "INFO"
    # How many reverse proxies in front set X-Forwarded-For/-Proto (0: trust none, use the peer).
    TRUSTED_PROXIES: int = 0
    # Issue 14: bearer token for /metrics (unset: only from 127.0.0.1); the streaming replica for
    # record reads, and how far behind it may be before reads go back to the primary.
    METRICS_TOKEN: str = ""
    DATABASE_REPLICA_URL: str | None = None
    REPLICA_MAX_LAG_SECONDS: float = 5.0
    # Set by the demo runner: the local emulator stands in for WeChat and Alipay.
    SANDBOX_URL: str | None = None
    TESTING: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Config:
        """Read the environment (or ``env``), apply ``overrides``, fill development defaults."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra" or f.name not in env:
                continue
            raw = env[f.name]
            if f.type in ("int", int):
                values[f.name] = int(raw)
            elif f.type in ("float", float):
                values[f.name] = float(raw)
            elif f.type in ("bool", bool):
                values[f.name] = raw.lower() in ("1", "true", "yes")
            else:
                values[f.name] = raw
        values.update(overrides)
        config = cls(**values)
        config.finish()
        return config

    @property
    def production(self) -> bool:
        return self.APP_ENV == "production"

    def finish(self) -> None:
        """Validate, and in development fill secrets and paths under instance/."""
        if self.production:
            missing = [name for name in _REQUIRED_IN_PRODUCTION if not getattr(self, name)]
            if missing:
                raise ConfigError(f"missing required setting(s) in production: {', '.join(missing)}")
            if not self.DOCUMENT_DIR:
                raise ConfigError("missing required setting in production: DOCUMENT_DIR")
        else:
            if not self.DATABASE_URL:
                INSTANCE_DIR.mkdir(exist_ok=True)
                self.DATABASE_URL = f"sqlite:///{INSTANCE_DIR / 'copay.sqlite3'}"
            if not self.DOCUMENT_DIR:
                self.DOCUMENT_DIR = str(INSTANCE_DIR / "documents")
            missing = [name for name in _GENERATED if not getattr(self, name)]
            fresh_install = "PII_KEY" in missing and not (INSTANCE_DIR / "dev-secrets.json").exists()
            if missing:
                stored = _instance_secrets()
                for name in missing:
                    setattr(self, name, stored[name])
            if not self.PII_INDEX_KEY:
                self.PII_INDEX_KEY = _dev_index_key(self.PII_KEY, fresh_install)
            if not self.ALIPAY_APP_PRIVATE_KEY and self.SANDBOX_URL:
                self.ALIPAY_APP_PRIVATE_KEY = _instance_secrets()["ALIPAY_APP_PRIVATE_KEY"]
        self.DATABASE_URL = normalize_database_url(self.DATABASE_URL)
        for name in ("PII_KEY", "VOUCHER_KEY", "PLEDGE_SIGNING_KEY", "PII_INDEX_KEY"):
            _check_b64_32(name, getattr(self, name))
        self.rate_per_user = parse_rate(self.RATE_LIMIT_PER_USER)
        self.rate_per_ip = parse_rate(self.RATE_LIMIT_PER_IP)
        parse_rate(self.CARD_LOOKUP_FAILURES)
        if self.VOUCHER_TTL_SECONDS < 10:
            raise ConfigError("VOUCHER_TTL_SECONDS must be at least 10")
        if self.ALIPAY_AES_KEY:
            from app.platforms.alipay import decode_aes_key

            try:
                decode_aes_key(self.ALIPAY_AES_KEY)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.WECHAT_AES_KEY and len(self.WECHAT_AES_KEY) != 43:
            raise ConfigError("WECHAT_AES_KEY must be WeChat's 43-character EncodingAESKey")

    def to_flask(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        values.update(self.extra)
        values["MAX_CONTENT_LENGTH"] = self.MAX_DOCUMENT_BYTES + 64 * 1024
        values["JSON_AS_ASCII"] = False
        values["RATE_PER_USER"] = self.rate_per_user
        values["RATE_PER_IP"] = self.rate_per_ip
        return values


def _check_b64_32(name: str, value: str) -> None:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{name} must be URL-safe base64 of 32 random bytes")


def _instance_secrets() -> dict[str, str]:
    """Development-only secrets, generated once and kept under instance/ (mode 0600)."""
    path = INSTANCE_DIR / "dev-secrets.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    changed = False
    for name, make in {**_GENERATED, "ALIPAY_APP_PRIVATE_KEY": _rsa_pem}.items():
        if name not in stored:
            stored[name] = make()
            changed = True
    if changed:
        INSTANCE_DIR.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored, indent=1))
        tmp.chmod(0o600)
        tmp.replace(path)
    return stored


def _dev_index_key(pii_key: str, fresh_install: bool) -> str:
    """Development's blind-index key (R17), kept under instance/ apart from PII_KEY, so rotating
    PII_KEY never changes it. A fresh install gets a random key; an existing one — whose stored
    indexes were made with the key derived from its current PII_KEY — pins that derived key once."""
    from app.security.pii import index_key_b64_from

    path = INSTANCE_DIR / "dev-secrets.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if not stored.get("PII_INDEX_KEY"):
        stored["PII_INDEX_KEY"] = _b64key() if fresh_install else index_key_b64_from(pii_key)
        INSTANCE_DIR.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored, indent=1))
        tmp.chmod(0o600)
        tmp.replace(path)
    return stored["PII_INDEX_KEY"]
