"""``create-staff … --console``: a password from stdin and the TOTP enrolment; the API token stays."""

from __future__ import annotations

import re

import pyotp

from tests.helpers import bearer
from tests.webconsole.helpers import csrf


def test_create_staff_with_console_sets_a_password_and_prints_the_totp_enrolment(app, client):
    result = app.test_cli_runner().invoke(args=["create-staff", "clerk", "--role", "window", "--console"],
                                          input="a long console password\n")
    assert result.exit_code == 0, result.output
    token = result.output.splitlines()[0]
    assert token.startswith("st_")
    uri = re.search(r"otpauth://\S+", result.output).group(0)
    secret = re.search(r"secret: (\S+)", result.output).group(1)
    assert "secret=" + secret in uri and "issuer=" in uri

    response = client.post("/console/login", data={"csrf_token": csrf(client), "username": "clerk",
                                                   "password": "a long console password",
                                                   "code": pyotp.TOTP(secret).now()})
    assert response.status_code == 303
    # The API token printed first works too (a window clerk may list bindings; the audit log is not theirs).
    assert client.get("/api/v1/staff/bindings", headers=bearer(token)).status_code == 200


def test_a_short_console_password_is_refused_and_nothing_is_created(app):
    result = app.test_cli_runner().invoke(args=["create-staff", "clerk", "--role", "window", "--console"],
                                          input="short\n")
    assert result.exit_code != 0 and "12" in result.output


def test_the_demo_staff_can_sign_in_with_the_published_demo_credentials(app, client, demo):
    from app.demo import DEMO_CONSOLE_PASSWORD, totp_now

    response = client.post("/console/login", data={"csrf_token": csrf(client), "username": "auditor1",
                                                   "password": DEMO_CONSOLE_PASSWORD, "code": totp_now("auditor1")})
    assert response.status_code == 303
