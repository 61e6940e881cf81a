"""Issue 8, hole 5 (R17, SPEC §6): the blind-index key never derives from a key that rotates, and
production refuses to start without PII_INDEX_KEY, WECHAT_AES_KEY and REDIS_URL."""

from __future__ import annotations

import json
from typing import Any

import pytest

import app.config as config_module
from app.config import Config, ConfigError
from app.security.pii import PiiCipher, index_key_b64_from
from tests.conftest import TEST_KEYS, _b64

PRODUCTION = {
    **TEST_KEYS,
    "APP_ENV": "production",
    "DATABASE_URL": "postgresql://copay@db/copay",
    "DOCUMENT_DIR": "/srv/copay/documents",
    "WECHAT_APPID": "wx0000000000test",
    "WECHAT_SECRET": "secret",
    "WECHAT_AES_KEY": "a" * 43,
    "ALIPAY_APPID": "2021000000000000",
    "ALIPAY_APP_PRIVATE_KEY": "pem",
    "ALIPAY_PUBLIC_KEY": "pem",
    "REDIS_URL": "redis://redis:6379/0",
}


@pytest.fixture
def instance(tmp_path, monkeypatch):
    """A development instance/ directory of its own."""
    monkeypatch.setattr(config_module, "INSTANCE_DIR", tmp_path)
    return tmp_path


def test_production_starts_with_everything_set() -> None:
    assert Config.from_env(env={}, **PRODUCTION).PII_INDEX_KEY == TEST_KEYS["PII_INDEX_KEY"]


@pytest.mark.parametrize("name", ["PII_INDEX_KEY", "WECHAT_AES_KEY", "REDIS_URL"])
def test_production_refuses_to_start_without(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env(env={}, **{**PRODUCTION, name: None if name != "WECHAT_AES_KEY" else ""})


def test_production_refuses_a_malformed_index_key() -> None:
    with pytest.raises(ConfigError, match="PII_INDEX_KEY"):
        Config.from_env(env={}, **{**PRODUCTION, "PII_INDEX_KEY": "short"})


def _dev(**values: Any) -> Config:
    return Config.from_env(env={}, DATABASE_URL="sqlite://", DOCUMENT_DIR="/tmp/unused", **values)


def test_a_fresh_development_install_gets_a_random_index_key_kept_apart_from_pii_key(instance) -> None:
    first = _dev()
    stored = json.loads((instance / "dev-secrets.json").read_text())
    assert first.PII_INDEX_KEY == stored["PII_INDEX_KEY"]
    assert first.PII_INDEX_KEY != index_key_b64_from(first.PII_KEY)  # not derived from a key that rotates
    # Rotating PII_KEY (the old one kept for decryption) leaves the index key where it was.
    rotated = _dev(PII_KEY=_b64(77), PII_OLD_KEYS=first.PII_KEY)
    assert rotated.PII_INDEX_KEY == first.PII_INDEX_KEY


def test_an_existing_development_install_pins_the_index_key_its_data_was_made_with(instance) -> None:
    pii_key = _b64(40)
    (instance / "dev-secrets.json").write_text(json.dumps({"SECRET_KEY": "s", "PII_KEY": pii_key,
                                                           "VOUCHER_KEY": _b64(41), "PLEDGE_SIGNING_KEY": _b64(42)}))
    config = _dev()
    assert config.PII_INDEX_KEY == index_key_b64_from(pii_key)
    assert json.loads((instance / "dev-secrets.json").read_text())["PII_INDEX_KEY"] == config.PII_INDEX_KEY
    assert _dev(PII_KEY=_b64(43), PII_OLD_KEYS=pii_key).PII_INDEX_KEY == index_key_b64_from(pii_key)


def test_a_cipher_with_old_keys_but_no_index_key_is_refused() -> None:
    with pytest.raises(ValueError, match="PII_INDEX_KEY is required"):
        PiiCipher.from_config(_b64(9), [_b64(1)])
