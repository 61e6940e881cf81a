"""Fault (b): a private PostgreSQL, started by the test on a free port, is stopped under load and
started again. While it is down every request answers 503 with ``Retry-After`` (never 500); the
app recovers on its own, without a restart; the retried settlements settle once; and
``verify-ledger`` is clean.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine

from app import demo as demo_data
from app.extensions import app_session
from models import Base
from tests.faults.load import Load, family
from tests.helpers import bearer
from tests.money_helpers import verify_ledger

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("TEST_DATABASE_URL"), reason="fault tests run on PostgreSQL"),
]


def test_postgres_restarted_under_load(private_postgres, make_app, sandbox):
    engine = create_engine(private_postgres.url)
    Base.metadata.create_all(engine)
    engine.dispose()
    app = make_app(DATABASE_URL=private_postgres.url, RATE_LIMIT_PER_USER="100000/60", RATE_LIMIT_PER_IP="100000/60")
    client = app.test_client()
    try:
        with app.app_context():
            with app_session() as session:
                demo_data.seed_demo(session, app.extensions["domain"].pii, datetime.now(UTC))
            fam = family(app, client, sandbox)
            load = Load(app, fam).start()
            time.sleep(1.0)
            before = dict(load.statuses)
            started = time.monotonic()
            private_postgres.stop("fast")  # terminates every session, in-flight transactions included
            time.sleep(2.0)
            down = client.get("/api/v1/me", headers=bearer(fam.owner_token))
            during = dict(load.statuses)
            private_postgres.start()
            restart_seconds = time.monotonic() - started
            time.sleep(2.0)
            load.stop()
            assert not load.errors, load.errors[:5]
            assert down.status_code == 503 and down.headers["Retry-After"] == "2"
            assert down.get_json()["error"]["details"]["unavailable"] == "database"
            assert {status for (_what, status) in load.statuses} <= {200, 201, 503}
            assert before.get(("settle", 201), 0) > 0
            assert sum(n for (_w, s), n in during.items() if s == 503) > 0, during
            assert load.statuses[("settle", 201)] > during.get(("settle", 201), 0)  # recovered, same app
            retried = load.retry_unanswered(client)
            result = verify_ledger(app)
            assert result.exit_code == 0 and "clean" in result.output, result.output
    finally:
        app.extensions["db.engine"].dispose()
    print(f"\npostgres restart ({restart_seconds:.1f} s down): {dict(load.statuses)}; "
          f"{len(load.settled)} settled ({retried} retried after a 503); verify-ledger: {result.output.strip()}")
