"""Fault (c): a private Redis is killed under load and started again (empty, as after a crash).

Decided per use (docs/RELIABILITY.md): institution nonces fail closed (503 + Retry-After: a nonce
must never be accepted twice); rate limits on ID-number checks fail closed (503), the others count
in process memory with a log line; notices wait in the database and are all pushed exactly once
when Redis is back. Nothing answers 500.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from notify.worker import run_worker
from tests.faults.load import Load, family
from tests.helpers import bearer, sign_in_wechat
from tests.money_helpers import OWNER, assert_ledger_clean

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("TEST_DATABASE_URL"), reason="fault tests run on PostgreSQL"),
]


def _worker_burst(app) -> int:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with app.app_context():
            return run_worker(app, burst=True)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_redis_killed_under_load(private_redis, make_app, sandbox, demo, caplog):
    app = make_app(REDIS_URL=private_redis.url, RATE_LIMIT_PER_USER="100000/60", RATE_LIMIT_PER_IP="100000/60")
    client = app.test_client()
    with app.app_context():
        fam = family(app, client, sandbox)
        load = Load(app, fam).start()
        time.sleep(1.0)
        before = dict(load.statuses)
        with caplog.at_level(logging.WARNING):
            private_redis.stop()
            time.sleep(2.0)
            # while down: settlements 503 (nonce), sign-in works (local limit), identity checks 503
            signed = sign_in_wechat(client, sandbox)
            identity = client.post("/api/v1/me/identity", json={"name": "张伟", "id_number": OWNER},
                                   headers=bearer(signed["access_token"]))
            during = dict(load.statuses)
            private_redis.start()
            time.sleep(1.5)
        load.stop()
        assert not load.errors, load.errors[:5]
        assert identity.status_code == 503 and identity.headers["Retry-After"]
        assert before.get(("settle", 201), 0) > 0
        assert during.get(("settle", 503), 0) > 0, during
        assert load.statuses[("settle", 201)] > during.get(("settle", 201), 0)  # recovered by itself
        assert "nonce store unavailable" in caplog.text and "fail local" in caplog.text
        assert {status for (_what, status) in load.statuses} <= {200, 201, 503}
        retried = load.retry_unanswered(client)

        # every settlement's notice is pushed once, though the queue died with Redis
        _worker_burst(app)
        _worker_burst(app)
        pushed = sandbox.sent_messages(to=fam.openid)
        assert len(pushed) == len(load.settled) == len(set(load.settled.values()))
        assert_ledger_clean(app)
    print(f"\nredis outage: {dict(load.statuses)}; {len(load.settled)} settled ({retried} after a 503), "
          f"{len(pushed)} pushes")
