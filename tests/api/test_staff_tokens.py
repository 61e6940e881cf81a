"""Staff API tokens expire (STAFF_TOKEN_TTL_SECONDS), can be revoked, and staff can be deactivated."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from app.extensions import app_session
from models import AuditEvent, StaffUser
from tests.helpers import bearer

LOOKUP = "/api/v1/staff/audit-log"


def _token(app, username="carol", role="auditor"):
    result = app.test_cli_runner().invoke(args=["create-staff", username, "--role", role])
    assert result.exit_code == 0, result.output
    return result.output.strip()


def test_a_staff_token_is_accepted_until_its_end(app, client):
    token = _token(app)
    assert client.get(LOOKUP, headers=bearer(token)).status_code == 200
    with app_session() as session, session.begin():
        ends = session.scalar(select(StaffUser.token_expires_at).where(StaffUser.username == "carol"))
        assert timedelta(hours=11, minutes=59) < ends - datetime.now(UTC) <= timedelta(hours=12)
        session.execute(update(StaffUser).where(StaffUser.username == "carol")
                        .values(token_expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    response = client.get(LOOKUP, headers=bearer(token))
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "UNAUTHENTICATED"


def test_the_token_lifetime_is_configurable(app, client, monkeypatch):
    monkeypatch.setitem(app.config, "STAFF_TOKEN_TTL_SECONDS", 60)
    _token(app)
    with app_session() as session, session.begin():
        ends = session.scalar(select(StaffUser.token_expires_at).where(StaffUser.username == "carol"))
    assert ends - datetime.now(UTC) <= timedelta(seconds=60)


def test_a_token_without_an_end_is_refused(app, client):
    token = _token(app)
    with app_session() as session, session.begin():
        session.execute(update(StaffUser).values(token_expires_at=None))
    assert client.get(LOOKUP, headers=bearer(token)).status_code == 401


def test_revoke_staff_token_stops_the_token_at_once_and_create_staff_issues_a_new_one(app, client):
    token = _token(app)
    result = app.test_cli_runner().invoke(args=["revoke-staff-token", "carol"])
    assert result.exit_code == 0, result.output
    assert client.get(LOOKUP, headers=bearer(token)).status_code == 401
    fresh = _token(app)
    assert client.get(LOOKUP, headers=bearer(fresh)).status_code == 200
    assert client.get(LOOKUP, headers=bearer(token)).status_code == 401


def test_deactivate_staff_disables_the_account_and_is_audited(app, client):
    token = _token(app, "dave", "admin")
    result = app.test_cli_runner().invoke(args=["deactivate-staff", "dave"])
    assert result.exit_code == 0 and "deactivated" in result.output
    assert client.get(LOOKUP, headers=bearer(token)).status_code == 401
    with app_session() as session, session.begin():
        staff = session.scalar(select(StaffUser).where(StaffUser.username == "dave"))
        assert staff.active is False and staff.token_revoked_at is not None
        assert session.scalar(select(AuditEvent.action).where(AuditEvent.target_id == staff.id)
                              .order_by(AuditEvent.id.desc())) == "staff.deactivate"


def test_deactivating_an_unknown_user_fails_cleanly(app):
    result = app.test_cli_runner().invoke(args=["deactivate-staff", "nobody"])
    assert result.exit_code != 0 and "No staff user" in result.output
