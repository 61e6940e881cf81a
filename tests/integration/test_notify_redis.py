"""Notices over Redis (R15): handed over after commit, run by ``notify-worker``, swept after an outage.

Needs a Redis server: ``TEST_REDIS_URL=redis://127.0.0.1:6379/<db>`` (skipped otherwise). "Redis
down" is an app pointed at a closed port — the machine's Redis keeps running for everyone else.
"""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from app import create_app
from notify import dispatch
from notify.dispatch import RqNotifier
from notify.worker import run_worker, take_handovers
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

    assert notifier.handed_over_count() == 6  # one hand-over per settlement, and one more
    assert notifier.queue().count == 0  # RQ is the sweeper's, not the commit's
    worker()
    worker()

    assert len(sandbox.sent_messages(to=owner.openid)) == 5
    assert {d.state for d in world.deliveries()} == {"sent"}
    assert notifier.handed_over_count() == 0 and notifier.queue().count == 0


def test_the_hand_over_after_commit_is_one_redis_command(app, world, monkeypatch):
    owner, child = world.person("张伟", alipay=True), world.person("张小明")
    notifier = app.extensions["domain"].notifier
    commands: list[tuple] = []
    real = notifier.redis.execute_command
    monkeypatch.setattr(notifier.redis, "execute_command",
                        lambda *args, **kw: commands.append(args) or real(*args, **kw))

    settled = world.settle(child, [(owner, "copay", 100)])

    assert len(settled.delivery_ids) == 2  # the owner's deduction on WeChat and on Alipay
    assert commands == [("RPUSH", dispatch.HANDOVER_KEY, ",".join(map(str, settled.delivery_ids)))]
    monkeypatch.undo()
    assert notifier.take_handed_over() == settled.delivery_ids


def test_the_worker_takes_a_few_hand_overs_at_a_time_and_only_with_a_free_send_thread(app, world, sandbox):
    owner, child = world.person("张伟"), world.person("张小明")
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, mode="long_term")
    settled = [world.settle(child, [(owner, "copay", 100 + i)]) for i in range(dispatch.HANDOVER_TAKE + 2)]
    notifier = app.extensions["domain"].notifier
    notifier.send_pool = ThreadPoolExecutor(2)
    notifier.send_slots = threading.BoundedSemaphore(1)
    try:
        notifier.send_slots.acquire()  # every send thread busy: nothing is taken from the list
        taker = threading.Thread(target=take_handovers, args=(notifier, 0.0))
        taker.start()
        taker.join(timeout=0.3)
        assert taker.is_alive() and notifier.handed_over_count() == len(settled)
        notifier.send_slots.release()
        taker.join(timeout=10)

        assert notifier.handed_over_count() == 2  # one task took HANDOVER_TAKE entries
        assert take_handovers(notifier, 0.0) == 2
        assert take_handovers(notifier, 0.0) == 0  # empty: nothing to wait for
    finally:
        notifier.send_pool.shutdown(wait=True)
        notifier.send_pool = None
    assert {d.state for d in world.deliveries()} == {"sent"}
    assert len(sandbox.sent_messages(to=owner.openid)) == len(settled)


def test_hand_overs_popped_by_a_worker_that_died_are_swept_once_their_grace_is_over(
        app, world, worker, sandbox, monkeypatch):
    owner, child = world.person("张伟"), world.person("张小明")
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, mode="long_term")
    settled = [world.settle(child, [(owner, "copay", 100 + i)]) for i in range(3)]
    notifier = app.extensions["domain"].notifier
    assert len(notifier.take_handed_over(entries=10)) == 3  # …and the process was killed

    assert notifier.sweep_and_enqueue() == 0  # still within the hand-over's grace: left alone
    later = notifier.deliverer.clock() + timedelta(seconds=dispatch.HANDOVER_GRACE_SECONDS + 1)
    monkeypatch.setattr(notifier.deliverer, "clock", lambda: later)
    assert notifier.sweep_and_enqueue() == 3
    worker()

    assert {d.state for d in world.deliveries()} == {"sent"}
    assert len(sandbox.sent_messages(to=owner.openid)) == len(settled)


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


def test_an_unreadable_hand_over_list_keeps_no_send_slot_and_fails_no_settlement(redis_down_app):
    notifier = redis_down_app.extensions["domain"].notifier
    with redis_down_app.app_context():
        notifier.committed([1, 2])  # connection refused: logged, the rows wait for the sweeper
        notifier.send_slots = threading.BoundedSemaphore(1)
        with pytest.raises(Exception, match="(?i)connect"):
            take_handovers(notifier, 0.0)
        assert notifier.send_slots.acquire(blocking=False)  # the slot was given back
