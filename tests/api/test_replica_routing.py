"""Replica routing without a replica (issue 14): a misconfigured or unreachable replica never fails a
read; the full behaviour on a real streaming replica is in tests/integration/test_read_replica.py."""

from __future__ import annotations

import pytest

from app.config import ConfigError
from app.replica import READS, ReplicaRouter
from tests.helpers import bearer
from tests.money_helpers import OWNER, sign_in
from tests.ops_helpers import free_port


def _reads(reason: str) -> float:
    return sum(s.value for m in READS.collect() for s in m.samples
               if s.name == "copay_record_reads_total" and s.labels["reason"] == reason)


def test_a_replica_url_must_be_postgresql(make_app, tmp_path):
    with pytest.raises(ConfigError, match="DATABASE_REPLICA_URL"):
        make_app(DATABASE_REPLICA_URL=f"sqlite:///{tmp_path / 'x.sqlite3'}")


def test_an_unreachable_replica_sends_record_reads_to_the_primary(make_app, demo, sandbox):
    app = make_app(DATABASE_REPLICA_URL=f"postgresql://copay@127.0.0.1:{free_port()}/nothing",
                   REPLICA_MAX_LAG_SECONDS=0.5)
    with app.app_context():
        client = app.test_client()
        token = sign_in(client, sandbox, OWNER)
        app.extensions["db.recent_writers"]._local.clear()  # as if the sign-in were long ago
        if app.extensions["db.recent_writers"].redis is not None:
            app.extensions["db.recent_writers"].redis.flushdb()
        before = _reads("replica_down")
        for path in ("/api/v1/records/deductions", "/api/v1/quota", "/api/v1/notifications"):
            assert client.get(path, headers=bearer(token)).status_code == 200
        assert _reads("replica_down") == before + 3
        assert app.extensions["db.replica"].state == "down"


def test_without_a_replica_nothing_changes(app, demo, client, sandbox):
    assert "db.replica" not in app.extensions
    token = sign_in(client, sandbox, OWNER)
    assert client.get("/api/v1/records/deductions", headers=bearer(token)).status_code == 200


def test_a_primary_that_cannot_be_sampled_sends_record_reads_to_the_primary(caplog):
    """Lag is measured against the primary's WAL position: without it, the replica's lag is unknown."""
    from sqlalchemy import create_engine

    router = ReplicaRouter(create_engine("sqlite://"), 5.0, create_engine("sqlite://"))  # no WAL to sample
    assert router.usable() == (False, "replica_unusable")
    assert router.state == "unknown" and router.lag is None
    assert "the primary was not sampled" in caplog.text
