"""Notices over RQ on Redis (R15): queued after commit, run by ``notify-worker``, swept after an outage.

Needs a Redis server: ``TEST_REDIS_URL=redis://127.0.0.1:6379/<db>`` (skipped otherwise). "Redis
down" is an app pointed at a closed port — the machine's Redis keeps running for everyone else.
"""

from __future__ import annotations

import os
import signal

import pytest

from app import create_app
from notify import dispatch
from notify.dispatch import RqNotifier
from notify.worker import run_worker
from tests.conftest import TEMPLATE_DEDUCTION
from tests.notify_helpers import NotifyWorld

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not os.environ.get("TEST_REDIS_URL"), reason="needs Redis (TEST_REDIS_URL)"),
]

CLOSED_PORT_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
def worker(app):
    """Run ``notify-worker --burst`` in this process (RQ installs signal handlers: put them back)."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def run() -> int:
        return run_worker(app, burst=True)

    yield run
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def world(app, sandbox):
    assert isinstance(app.extensions["domain"].notifier, RqNotifier)
    return NotifyWorld(app, sandbox)


@pytest.fixture
def redis_down_app(make_config):
    down = create_app(make_config(REDIS_URL=CLOSED_PORT_REDIS))
    yield down
    down.extensions["db.engine"].dispose()


def test_the_worker_pushes_each_committed_delivery_once_even_if_it_was_queued_twice_R15(
        app, world, worker, sandbox):
    owner, child = world.person("张伟"), world.person("张小明")
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, mode="long_term")
    settled = [world.settle(child, [(owner, "copay", 100 + i)]) for i in range(5)]
    notifier = app.extensions["domain"].notifier
    notifier.committed([s.delivery_ids[0] for s in settled])  # handed over a second time

    assert notifier.queue().count == 6  # one job per settlement, and one more
    worker()
    worker()

    assert len(sandbox.sent_messages(to=owner.openid)) == 5
    assert {d.state for d in world.deliveries()} == {"sent"}
    assert notifier.queue().count == 0


def test_settlements_while_redis_is_down_are_delivered_once_when_it_is_back_R15(
        app, world, worker, sandbox, redis_down_app, monkeypatch):
    monkeypatch.setattr(dispatch, "SWEEP_BATCH", 4)  # the backlog takes several sweeps
    owners = [world.person(f"张{i}") for i in range(3)]
    child = world.person("张小明")
    for owner in owners:
        world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, mode="long_term")
    up = [world.settle(child, [(owners[i % 3], "copay", 100 + i)]) for i in range(6)]
    with redis_down_app.app_context():
        down_world = NotifyWorld(redis_down_app, sandbox)
        down_world.institution_id = world.institution_id
        # The enqueue fails (connection refused); the settlements themselves succeed.
        down = [down_world.settle(child, [(owners[i % 3], "copay", 200 + i)]) for i in range(9)]
    up += [world.settle(child, [(owners[i % 3], "copay", 300 + i)]) for i in range(3)]

    pending = {d.id for d in world.deliveries() if d.state == "pending"}
    assert pending >= {i for s in down for i in s.delivery_ids}
    worker()  # the sweep queues what the commit path could not
    worker()

    assert {d.state for d in world.deliveries()} == {"sent"}
    per_owner = [len(sandbox.sent_messages(to=o.openid)) for o in owners]
    assert sum(per_owner) == len(up) + len(down) == 18
    amounts = [m.data["amount5"] for o in owners for m in sandbox.sent_messages(to=o.openid)]
    assert len(set(amounts)) == 18  # every settlement once, none twice


def test_a_due_retry_is_queued_by_the_sweep_and_sent(app, world, worker, sandbox, monkeypatch):
    owner, child = world.person("张伟"), world.person("张小明")
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    sandbox.inject_fault("wechat.subscribe_send", errcode=-1)
    (delivery_id,) = world.settle(child, [(owner, "copay", 100)]).delivery_ids
    worker()
    retry_at = world.delivery(delivery_id).next_attempt_at
    assert world.delivery(delivery_id).state == "pending"

    deliverer = app.extensions["domain"].notifier.deliverer
    monkeypatch.setattr(deliverer, "clock", lambda: retry_at)
    worker()

    assert world.delivery(delivery_id).state == "sent"
    assert len(sandbox.sent_messages(to=owner.openid)) == 1
