"""Issue 8, hole 5: rotating PII_KEY (the old key kept in PII_OLD_KEYS) keeps every look-up working.

Before the fix the blind-index key was derived from PII_KEY: after a rotation identity checks failed
and a registry reload inserted every person again (7 persons became 14).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

import app.config as config_module
from app.demo import OWNER, demo_registry
from app.extensions import app_session
from app.services.registry import load_registry
from models import Person
from tests.conftest import TEST_KEYS, _b64
from tests.helpers import signed_in_person
from tests.money_helpers import assert_ledger_clean


@pytest.fixture
def instance(tmp_path, monkeypatch):
    """A development instance/ directory of its own: no PII_INDEX_KEY is configured (dev default)."""
    monkeypatch.setattr(config_module, "INSTANCE_DIR", tmp_path)
    return tmp_path


def persons(app) -> int:
    with app.app_context(), app_session() as session, session.begin():
        return session.scalar(select(func.count()).select_from(Person))


def load_demo(app) -> None:
    with app.app_context(), app_session() as session:
        load_registry(session, app.extensions["domain"].pii, demo_registry(), datetime.now(UTC))


def test_rotating_pii_key_keeps_identity_look_ups_and_registry_reloads(app, make_app, sandbox, instance):
    before = make_app(PII_INDEX_KEY=None)
    load_demo(before)
    assert persons(before) == 7
    signed_in_person(before.test_client(), sandbox, "张伟", OWNER, openid="o-before-rotation")

    after = make_app(PII_INDEX_KEY=None, PII_KEY=_b64(99), PII_OLD_KEYS=TEST_KEYS["PII_KEY"])
    assert after.config["PII_INDEX_KEY"] == before.config["PII_INDEX_KEY"]
    # Identity look-ups by ID number still find the person…
    signed_in_person(after.test_client(), sandbox, "张伟", OWNER, openid="o-after-rotation")
    # …and a registry reload updates the same 7 persons instead of inserting 7 more.
    load_demo(after)
    assert persons(after) == 7
    with after.app_context():
        assert_ledger_clean(after)
