"""Closing the request's session never turns an answer into an exception (fault tests, issue 15).

When PostgreSQL goes away under a request, the view answers 503 (or, if it had finished, its own
answer) — and then the app context's teardown closes the request's session, which rolls back on
the dead connection. That rollback must not escape: an exception out of teardown replaces the
response the client was about to get (gunicorn answers 500 or drops the connection). Seen once in
``tests/faults/test_postgres_restart.py`` as a raw ``OperationalError`` out of the test client.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy.exc import OperationalError

from app.extensions import EnvelopeSession
from tests.helpers import bearer
from tests.money_helpers import OWNER, sign_in


def test_a_failing_close_at_teardown_keeps_the_answer(app, client, sandbox, demo, monkeypatch, caplog):
    token = sign_in(client, sandbox, OWNER)
    closed = {"invalidated": 0}
    real_close, real_invalidate = EnvelopeSession.close, EnvelopeSession.invalidate

    def dead_close(self):
        real_close(self)
        raise OperationalError("ROLLBACK", {}, Exception("server closed the connection unexpectedly"))

    def counted_invalidate(self):
        closed["invalidated"] += 1
        real_invalidate(self)

    monkeypatch.setattr(EnvelopeSession, "close", dead_close)
    monkeypatch.setattr(EnvelopeSession, "invalidate", counted_invalidate)
    response = _on_own_thread(client.get, "/api/v1/me", headers=bearer(token))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert closed["invalidated"] == 1  # the connection is not given back to the pool as if sound
    assert "closing the request's database session failed" in caplog.text


def test_other_errors_at_teardown_are_not_hidden(app, client, sandbox, demo, monkeypatch):
    token = sign_in(client, sandbox, OWNER)

    real_close = EnvelopeSession.close

    def broken_close(self):
        real_close(self)  # the connection goes back to the pool: only the error is under test
        raise RuntimeError("a bug, not a dead connection")

    monkeypatch.setattr(EnvelopeSession, "close", broken_close)
    with pytest.raises(RuntimeError):
        _on_own_thread(client.get, "/api/v1/me", headers=bearer(token))


def _on_own_thread(call, *args, **kwargs):
    """As a server thread runs a request: with no app context of the test's around it, so the
    request pushes its own and the teardown runs at its end."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call, *args, **kwargs).result()
