"""Fixtures for emulator and platform-adapter tests: RSA keys, a running Sandbox, fresh gateways."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from app.platforms.alipay import AlipayGateway
from app.platforms.wechat import WeChatGateway
from sandbox import Sandbox
from sandbox.alipay import generate_private_key_pem, public_key_pem

_serial = itertools.count(1)


@dataclass(frozen=True)
class Apps:
    """The apps every test sandbox has registered, plus fresh user ids (tests share one sandbox)."""

    wechat_appid: str = "wx0123456789abcdef"
    wechat_secret: str = "0123456789abcdef0123456789abcdef"
    wechat_template: str = "TPL-deduction-0001"
    wechat_other_template: str = "TPL-receipt-0002"
    wechat_page: str = "pages/notice/index"
    alipay_appid: str = "2021000000000001"
    alipay_template: str = "ATPL-deduction-0001"
    alipay_aes_key: str = "MDEyMzQ1Njc4OWFiY2RlZg=="  # base64 of 16 bytes (接口内容加密 key)

    @staticmethod
    def new_openid() -> str:
        return f"oSandbox{next(_serial):08d}"

    @staticmethod
    def new_alipay_user_id() -> str:
        return f"2088{next(_serial):012d}"

    @staticmethod
    def new_alipay_open_id() -> str:
        return f"074aOpen{next(_serial):010d}"


APPS = Apps()


@pytest.fixture(scope="session")
def apps() -> Apps:
    return APPS


@pytest.fixture(scope="session")
def app_private_key_pem() -> str:
    """Our Alipay app's RSA2 private key (2048-bit keygen is slow, so once per session)."""
    return generate_private_key_pem()


@pytest.fixture(scope="session")
def wrong_private_key_pem() -> str:
    """A key that is neither the app's nor the emulator's."""
    return generate_private_key_pem()


@pytest.fixture(scope="session")
def emulator_private_key_pem() -> str:
    return generate_private_key_pem()


def make_sandbox(emulator_private_key_pem: str, app_private_key_pem: str) -> Sandbox:
    """A started Sandbox with one WeChat and one Alipay app registered."""
    sandbox = Sandbox(alipay_private_key_pem=emulator_private_key_pem).start()
    sandbox.register_wechat_app(
        APPS.wechat_appid,
        APPS.wechat_secret,
        templates=[APPS.wechat_template, APPS.wechat_other_template],
        pages=[APPS.wechat_page],
    )
    sandbox.register_alipay_app(
        APPS.alipay_appid, public_key_pem(app_private_key_pem), templates=[APPS.alipay_template],
        aes_key=APPS.alipay_aes_key,
    )
    return sandbox


@pytest.fixture(scope="module")
def module_sandbox(emulator_private_key_pem, app_private_key_pem):
    sandbox = make_sandbox(emulator_private_key_pem, app_private_key_pem)
    yield sandbox
    sandbox.stop()


@pytest.fixture
def sandbox(module_sandbox):
    """The module's running sandbox; faults and "down" switches are cleared after each test."""
    yield module_sandbox
    module_sandbox.clear_faults()


@pytest.fixture
def wechat(sandbox) -> WeChatGateway:
    """A gateway with its own (empty) token cache and a short timeout."""
    return WeChatGateway(APPS.wechat_appid, APPS.wechat_secret, sandbox.wechat_api_base_url, timeout=1.0)


@pytest.fixture(scope="module")
def module_alipay(module_sandbox, app_private_key_pem) -> AlipayGateway:
    # Stateless, and loading RSA keys into the SDK is slow: one per module.
    return AlipayGateway(
        APPS.alipay_appid,
        app_private_key_pem,
        module_sandbox.alipay_public_key_pem,
        module_sandbox.alipay_gateway_url,
        timeout=1.0,
    )


@pytest.fixture
def alipay(sandbox, module_alipay) -> AlipayGateway:
    return module_alipay


@pytest.fixture
def fresh_sandbox(emulator_private_key_pem, app_private_key_pem):
    """A sandbox of the test's own, for tests that move its clock or stop it."""
    sandbox = make_sandbox(emulator_private_key_pem, app_private_key_pem)
    yield sandbox
    sandbox.stop()
