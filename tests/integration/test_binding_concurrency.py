"""Concurrent binding requests on PostgreSQL (R5): one binding per pair, max_beneficiaries holds.

On the embedded SQLite default every write transaction starts with BEGIN IMMEDIATE, so two
requests can never interleave there and these races cannot happen; they need PostgreSQL's row
locks and the partial unique index ``uq_bindings_live_pair``.
"""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import func, select

from app.demo import CHILD, NEIGHBOUR, OWNER, PARENT, SPOUSE
from app.extensions import app_session
from models import AuthorizationEvent, Binding, Pledge
from tests.binding_helpers import bind, created, policy_dir, sign_in, upload
from tests.helpers import bearer
from tests.integration.test_settlement_concurrency import together

pytestmark = pytest.mark.postgres(
    reason="needs PostgreSQL (TEST_DATABASE_URL): SQLite serialises writers with BEGIN IMMEDIATE, "
           "so concurrent binding requests cannot race there")

THREADS = 8


def race(app, calls):
    """Run each call with its own test client at the same moment; return the responses' (status, code)."""
    return [(status, body.get("error", {}).get("code") if body else None) for status, body in together(app, calls)]


def live_bindings(owner_person_id=None):
    with app_session() as session, session.begin():
        query = select(func.count()).select_from(Binding).where(Binding.status.in_(
            ("pending_review", "pending_consent", "active", "suspended")))
        if owner_person_id is not None:
            query = query.where(Binding.owner_person_id == owner_person_id)
        return session.scalar(query)


def test_r5_a_double_submitted_binding_creates_one_binding(app, client, sandbox, demo):
    owner = sign_in(client, sandbox, OWNER)
    results = race(app, [lambda c: bind(c, owner, CHILD, "child")] * THREADS)
    assert Counter(results) == Counter({(201, None): 1, (422, "ALREADY_BOUND"): THREADS - 1})
    assert live_bindings() == 1
    with app_session() as session, session.begin():
        assert session.scalar(select(func.count()).select_from(Pledge)) == 1
        assert session.scalar(select(func.count()).select_from(AuthorizationEvent)) == 2


def test_r5_concurrent_bindings_to_different_members_never_pass_max_beneficiaries(make_app, sandbox, demo, tmp_path):
    app = make_app(POLICY_DIR=policy_dir(tmp_path, "532600", max_beneficiaries=2))
    client = app.test_client()
    owner = sign_in(client, sandbox, OWNER)
    document = created(upload(client, owner))
    calls = [lambda c: bind(c, owner, CHILD, "child"), lambda c: bind(c, owner, SPOUSE, "spouse"),
             lambda c: bind(c, owner, PARENT, "parent"),
             lambda c: bind(c, owner, NEIGHBOUR, "parent", [document["id"]])]
    results = race(app, calls * 2)
    assert Counter(status for status, _ in results)[201] == 2
    assert {code for status, code in results if status != 201} <= {"TOO_MANY_BINDINGS", "ALREADY_BOUND"}
    person_id = client.get("/api/v1/me", headers=bearer(owner)).get_json()["person"]["person_id"]
    assert live_bindings(person_id) == 2


def test_r5_the_owner_and_the_window_binding_the_same_member_at_once_create_one_binding(app, client, sandbox, demo):
    from tests.binding_helpers import bind_at_window

    owner = sign_in(client, sandbox, OWNER)
    window = demo.tokens["window1"]
    calls = [lambda c: bind(c, owner, SPOUSE, "spouse"), lambda c: bind_at_window(c, window, OWNER, SPOUSE, "spouse")]
    results = race(app, calls * 3)
    assert Counter(status for status, _ in results)[201] == 1
    assert live_bindings() == 1
