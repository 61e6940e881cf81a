"""Fault (d): the notice worker (a real ``flask notify-worker`` process) is killed with SIGKILL while
it is sending, then started again.

What must hold (R15, docs/notices.md): no message is pushed twice; every delivery the dead worker
had not claimed is sent by the next worker; every delivery it had claimed is, once its lease has run
out, marked ``failed``/``outcome_unknown`` (the platform may already have shown it) — visible to staff,
who can resend it — and never resent on its own. The lease is 60 s; the test moves the claimed rows'
lease end into the past instead of waiting.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from app.extensions import app_session
from models import Delivery
from tests.conftest import TEMPLATE_DEDUCTION, TEST_KEYS, WECHAT_APPID, WECHAT_SECRET
from tests.notify_helpers import NotifyWorld

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("TEST_DATABASE_URL"), reason="fault tests run on PostgreSQL"),
]

ROOT = Path(__file__).resolve().parents[2]
SETTLEMENTS = 40


def _worker(app, redis_url: str, *args: str) -> subprocess.Popen:
    env = {
        "PATH": os.environ.get("PATH", ""), **TEST_KEYS,
        "DATABASE_URL": app.config["DATABASE_URL"], "REDIS_URL": redis_url,
        "DOCUMENT_DIR": app.config["DOCUMENT_DIR"],
        "WECHAT_APPID": WECHAT_APPID, "WECHAT_SECRET": WECHAT_SECRET,
        "WECHAT_API_BASE_URL": app.config["WECHAT_API_BASE_URL"], "WECHAT_TEMPLATE_DEDUCTION": TEMPLATE_DEDUCTION,
        "PLATFORM_TIMEOUT_SECONDS": "5", "LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "notify-worker", *args], cwd=ROOT,
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _states(world) -> Counter:
    return Counter((d.state, d.last_error_code) for d in world.deliveries())


def test_a_worker_killed_mid_delivery_never_pushes_twice_and_the_rest_is_sent(private_redis, make_app, sandbox):
    app = make_app(REDIS_URL=private_redis.url)
    with app.app_context():
        world = NotifyWorld(app, sandbox)
        owner, child = world.person("张伟"), world.person("张小明")
        world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, mode="long_term")
        ids = [world.settle(child, [(owner, "copay", 1000 + i)]).delivery_ids[0] for i in range(SETTLEMENTS)]
        sandbox.inject_fault("wechat.subscribe_send", delay=0.4, times=10_000)  # a slow platform
        worker = _worker(app, private_redis.url)
        deadline = time.monotonic() + 60
        while len(sandbox.sent_messages(to=owner.openid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        time.sleep(0.6)  # sends already on the wire reach the emulator
        at_kill = _states(world)
        claimed = at_kill[("sending", None)]
        assert claimed > 0, at_kill  # it really died mid-delivery
        sandbox.clear_faults()
        with app_session() as session, session.begin():  # the 60 s lease runs out
            session.execute(update(Delivery).where(Delivery.state == "sending")
                            .values(claimed_until=datetime.now(UTC) - timedelta(seconds=1)))

        again = _worker(app, private_redis.url, "--burst")
        assert again.wait(timeout=120) == 0, again.stderr.read().decode()[-2000:]

        after = _states(world)
        pushes = Counter(m.data["amount5"] for m in sandbox.sent_messages(to=owner.openid))
    assert max(pushes.values()) == 1, pushes  # never twice
    assert after[("sent", None)] + after[("failed", "outcome_unknown")] == len(ids)
    assert after[("failed", "outcome_unknown")] == claimed  # the claimed ones, given up, not resent
    assert len(pushes) >= after[("sent", None)]  # every sent row was pushed (some unknown ones too)
    print(f"\nworker killed: {at_kill} at the kill; after restart {after}; {sum(pushes.values())} pushes "
          f"for {len(ids)} deliveries, none twice")
