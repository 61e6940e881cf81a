"""Console sign-in under concurrency on PostgreSQL: failures are never lost, a TOTP code opens
exactly one session, however many requests race (issue 12).

On the embedded SQLite default every write transaction starts with BEGIN IMMEDIATE, so these races
cannot happen there; they need PostgreSQL's row locks on ``console_lockouts`` and ``staff_users``.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from app import errors
from app.extensions import app_session
from app.services import console_auth
from models import ConsoleLockout, ConsoleSession
from tests.webconsole.helpers import PASSWORD, code, make_staff

pytestmark = pytest.mark.postgres(
    reason="needs PostgreSQL (TEST_DATABASE_URL): SQLite serialises writers with BEGIN IMMEDIATE, "
           "so concurrent sign-ins cannot race there")
THREADS = 8


def race(app, attempt):
    barrier = threading.Barrier(THREADS)
    outcomes: list[str] = []
    lock = threading.Lock()

    def run(i):
        with app.app_context(), app_session() as session:
            barrier.wait()
            try:
                attempt(session, i)
                result = "ok"
            except errors.DomainError as exc:
                result = type(exc).__name__
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_concurrent_failures_are_all_counted_and_lock_the_account(app):
    make_staff(app, "clerk", "window")
    pii = app.extensions["domain"].pii

    outcomes = race(app, lambda session, i: console_auth.sign_in(
        session, pii, username="clerk", password=f"wrong password {i}", code="000000", ip=f"10.1.0.{i}",
        now=datetime.now(UTC)))

    assert set(outcomes) <= {"SignInFailed", "SignInLocked"}
    with app_session() as session, session.begin():
        row = session.get(ConsoleLockout, f"user:{console_auth.username_hmac(pii, 'clerk')}")
        failed = outcomes.count("SignInFailed")
        assert row.failures == failed and failed >= 5 and row.locked_until is not None


def test_one_totp_code_opens_one_session_however_many_race(app):
    secret = make_staff(app, "clerk", "window")
    pii = app.extensions["domain"].pii
    now = datetime.now(UTC)
    one_code = code(secret, now)

    outcomes = race(app, lambda session, i: console_auth.sign_in(
        session, pii, username="clerk", password=PASSWORD, code=one_code, ip=f"10.2.0.{i}", now=now))

    assert outcomes.count("ok") == 1
    with app_session() as session, session.begin():
        assert session.scalar(select(func.count()).select_from(ConsoleSession)) == 1
