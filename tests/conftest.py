"""Shared fixtures.

``make test`` runs on the embedded default (a SQLite file, no Redis). With ``TEST_DATABASE_URL``
(a PostgreSQL server URL) and ``TEST_REDIS_URL`` the same suite runs against them: each run gets
its own fresh database, dropped at the end, and its own Redis database number, flushed.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import create_engine, text

from app import create_app
from app.config import Config
from models import Base

WECHAT_APPID = "wx0000000000test"
WECHAT_SECRET = "test-wechat-secret-0123456789abcdef"
ALIPAY_APPID = "2021000000000000"
TEMPLATE_DEDUCTION = "tmpl-deduction-0001"
TEMPLATE_RECEIPT = "tmpl-receipt-0001"
ALIPAY_TEMPLATE_DEDUCTION = "alipay-tmpl-deduction-0001"
ALIPAY_AES_KEY = "dGVzdC1hZXMta2V5LTAwMQ=="  # base64 of 16 bytes: the app's 接口内容加密 key (R21)


def _b64(seed: int) -> str:
    return base64.urlsafe_b64encode(bytes((seed + i) % 256 for i in range(32))).decode()


TEST_KEYS = {"SECRET_KEY": "test-secret", "PII_KEY": _b64(1), "VOUCHER_KEY": _b64(2),
             "PLEDGE_SIGNING_KEY": _b64(3)}
TEST_KEYS["PII_INDEX_KEY"] = _b64(4)  # the blind-index key is never derived from PII_KEY (issue 8)


@pytest.fixture(scope="session")
def postgres() -> bool:
    return bool(os.environ.get("TEST_DATABASE_URL"))


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """``@pytest.mark.postgres(reason=…)``: skipped on the embedded default (no ``TEST_DATABASE_URL``)."""
    if os.environ.get("TEST_DATABASE_URL"):
        return
    for item in items:
        marker = item.get_closest_marker("postgres")
        if marker is not None:
            reason = marker.kwargs.get("reason", "needs PostgreSQL (TEST_DATABASE_URL)")
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = os.environ.get("TEST_DATABASE_URL")
    if not server:
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"
        return
    from tests.helpers import scratch_database

    with scratch_database("copay_test") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str | None]:
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        yield None
        return
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def schema(database_url: str) -> str:
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)
    engine.dispose()
    return database_url


@pytest.fixture(scope="session")
def alipay_app_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_private(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _pem_public(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="session")
def sandbox(alipay_app_key: rsa.RSAPrivateKey) -> Iterator[Any]:
    from sandbox import Sandbox

    box = Sandbox()
    box.register_wechat_app(WECHAT_APPID, WECHAT_SECRET, templates=[TEMPLATE_DEDUCTION, TEMPLATE_RECEIPT])
    box.register_alipay_app(ALIPAY_APPID, _pem_public(alipay_app_key), templates=[ALIPAY_TEMPLATE_DEDUCTION],
                            aes_key=ALIPAY_AES_KEY)
    box.start()
    yield box
    box.stop()


@pytest.fixture(scope="session")
def make_config(schema: str, redis_url: str | None, sandbox: Any, alipay_app_key: rsa.RSAPrivateKey,
                tmp_path_factory: pytest.TempPathFactory):
    documents = tmp_path_factory.mktemp("documents")

    def make(**overrides: Any) -> Config:
        values: dict[str, Any] = {
            **TEST_KEYS,
            "DATABASE_URL": schema,
            "REDIS_URL": redis_url,
            "DOCUMENT_DIR": str(documents),
            "WECHAT_APPID": WECHAT_APPID,
            "WECHAT_SECRET": WECHAT_SECRET,
            "WECHAT_API_BASE_URL": sandbox.url + "/",
            "WECHAT_TEMPLATE_DEDUCTION": TEMPLATE_DEDUCTION,
            "WECHAT_MSG_TOKEN": "test-msg-token",
            "ALIPAY_APPID": ALIPAY_APPID,
            "ALIPAY_APP_PRIVATE_KEY": _pem_private(alipay_app_key),
            "ALIPAY_PUBLIC_KEY": sandbox.alipay_public_key_pem,
            "ALIPAY_AES_KEY": ALIPAY_AES_KEY,
            "ALIPAY_GATEWAY_URL": sandbox.url + "/gateway.do",
            "ALIPAY_TEMPLATE_DEDUCTION": ALIPAY_TEMPLATE_DEDUCTION,
            "PLATFORM_TIMEOUT_SECONDS": 2.0,
            "TESTING": True,
        }
        values.update(overrides)
        return Config.from_env(env={}, **values)

    return make


def _clean(app: Any) -> None:
    engine = app.extensions["db.engine"]
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in tables:
                conn.execute(text(f"DELETE FROM {name}"))
    app.extensions["ratelimiter"].storage.reset()
    app.extensions["domain"].card_guard.reset()
    redis = app.extensions.get("redis")
    if redis is not None:
        redis.flushdb()


@pytest.fixture(scope="session")
def base_app(make_config: Any) -> Iterator[Any]:
    app = create_app(make_config())
    yield app
    app.extensions["db.engine"].dispose()


@pytest.fixture
def app(base_app: Any, sandbox: Any) -> Iterator[Any]:
    """The default test app (region 532600); the database is emptied after each test."""
    with base_app.app_context():
        yield base_app
    _clean(base_app)
    if hasattr(sandbox, "reset"):
        sandbox.reset()


@pytest.fixture
def make_app(make_config: Any, app: Any) -> Iterator[Any]:
    """Build an app with other settings (e.g. another REGION_CODE) over the same database."""
    made: list[Any] = []

    def make(**overrides: Any) -> Any:
        other = create_app(make_config(**overrides))
        made.append(other)
        return other

    yield make
    for other in made:
        other.extensions["ratelimiter"].storage.reset()
        other.extensions["db.engine"].dispose()


@pytest.fixture
def ledger_stays_clean(app: Any) -> Iterator[None]:
    """For the modules that move money (``pytestmark = pytest.mark.usefixtures("ledger_stays_clean")``):
    verify-ledger must be clean after every test. Not autouse: notify tests write settlements without
    ledger entries on purpose."""
    from tests.money_helpers import assert_ledger_clean

    yield
    assert_ledger_clean(app)


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def demo(app: Any) -> Any:
    """The demo registry loaded, with staff tokens: ``demo.staff['window1']``."""
    from app import demo as demo_data
    from app.extensions import app_session

    with app_session() as session:
        staff = demo_data.seed_demo(session, app.extensions["domain"].pii, datetime.now(UTC))

    class Demo:
        ids = demo_data
        tokens = staff

    return Demo


def random_openid() -> str:
    return "o" + secrets.token_hex(13)


def docs_dir(app: Any) -> Path:
    return Path(app.config["DOCUMENT_DIR"])
