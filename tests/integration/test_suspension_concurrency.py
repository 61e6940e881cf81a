"""Issue 8, hole 1 under concurrency (PostgreSQL): lifting a pair's suspension while the owner binds
the same family member again never leaves the new binding suspended with nothing to lift.

Binding locks the owner's person row before it reads the pair's suspensions; lifting locks the same
row before it looks for the pair's live binding. Whichever goes first, the binding ends up active.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select, text

import app.services.bindings as bindings_service
from app.demo import CHILD, OWNER
from app.extensions import app_session
from models import Binding
from tests.binding_helpers import bind, created, sign_in
from tests.helpers import bearer, waiting_for_lock

pytestmark = pytest.mark.postgres(
    reason="needs PostgreSQL (TEST_DATABASE_URL): SQLite serialises writers, so the race cannot happen")


def test_binding_again_while_the_pair_suspension_is_lifted_ends_active(app, client, sandbox, demo, monkeypatch):
    owner = sign_in(client, sandbox, OWNER)
    first = created(bind(client, owner, CHILD, "child"))
    admin = bearer(demo.tokens["admin1"])
    suspension = client.post("/api/v1/staff/suspensions", json={"binding_id": first["id"], "reason": "套现"},
                             headers=admin).get_json()
    assert client.post(f"/api/v1/bindings/{first['id']}/unbind", json={}, headers=bearer(owner)).status_code == 200

    # Hold the window open: the binding has read the (still unlifted) suspension and not yet committed.
    read = threading.Event()
    original = bindings_service.pair_suspension

    def slow_pair_suspension(*args, **kwargs):
        found = original(*args, **kwargs)
        if found is not None and not read.is_set():
            read.set()
            time.sleep(0.5)
        return found

    monkeypatch.setattr(bindings_service, "pair_suspension", slow_pair_suspension)
    results = {}
    binder = threading.Thread(target=lambda: results.update(bind=bind(app.test_client(), owner, CHILD, "child")))
    binder.start()
    assert read.wait(10)
    lifted = app.test_client().post(f"/api/v1/staff/suspensions/{suspension['id']}/lift", json={}, headers=admin)
    binder.join(10)

    assert lifted.status_code == 200 and results["bind"].status_code == 201
    with app_session() as session, session.begin():
        statuses = session.scalars(select(Binding.status).where(Binding.id != first["id"])).all()
    assert statuses == ["active"]  # not `suspended` with nothing left to lift


def test_lifting_a_pair_suspension_while_the_pair_is_being_settled_does_not_deadlock(app, client, sandbox, demo):
    """A settlement share-locks the beneficiary's bindings, then writes rows naming the owners' persons
    (payments, notices): PostgreSQL checks each such foreign key with FOR KEY SHARE on the person row.
    Lifting a pair's suspension locks the owner's person row, then the pair's live binding — waiting
    on the settlement's share lock. The person lock must not block the settlement's key-share, or the
    two wait on each other until PostgreSQL kills one (deadlock_detected: a 503 for one of them)."""
    owner = sign_in(client, sandbox, OWNER)
    binding = created(bind(client, owner, CHILD, "child"))
    admin = bearer(demo.tokens["admin1"])
    suspension = client.post("/api/v1/staff/suspensions", json={"binding_id": binding["id"], "reason": "套现"},
                             headers=admin).get_json()
    lifted: list[int] = []
    with app_session() as settling, settling.begin():
        owner_person = settling.scalar(select(Binding.owner_person_id).where(Binding.id == binding["id"]))
        # The settlement's share lock on the bindings of the family member.
        settling.execute(text("SELECT id FROM bindings WHERE id = :b FOR SHARE"), {"b": binding["id"]})
        clerk = threading.Thread(target=lambda: lifted.append(app.test_client().post(
            f"/api/v1/staff/suspensions/{suspension['id']}/lift", json={}, headers=admin).status_code))
        clerk.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not waiting_for_lock("%FROM bindings%FOR UPDATE%"):  # the lift waits
            time.sleep(0.05)
        assert waiting_for_lock("%FROM bindings%FOR UPDATE%")
        # Then the settlement writes a row naming the owner's person: the foreign key's check.
        settling.execute(text("SELECT id FROM persons WHERE id = :p FOR KEY SHARE"), {"p": owner_person})
    clerk.join(20)
    assert lifted == [200]
