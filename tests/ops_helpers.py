"""Helpers for the operations tests (issue 14): scratch databases, free ports, a money history."""

from __future__ import annotations

import shlex
import socket
from typing import Any

from app.config import ROOT
from tests.money_helpers import CHILD, OWNER, fresh, issue, make_binding, person_id, refund, settle, sign_in

UNITS = ROOT / "deploy" / "systemd"


def unit_command(unit: str) -> list[str]:
    """The unit's ExecStart, pointed at this checkout instead of /opt/copay."""
    for line in (UNITS / unit).read_text().splitlines():
        if line.startswith("ExecStart="):
            return [part.replace("/opt/copay/", f"{ROOT}/") for part in shlex.split(line[len("ExecStart="):])]
    raise AssertionError(f"{unit} has no ExecStart")


def unit_environment(unit: str) -> dict[str, str]:
    found = {}
    for line in (UNITS / unit).read_text().splitlines():
        if line.startswith("Environment="):
            for assignment in shlex.split(line[len("Environment="):]):
                name, _, value = assignment.partition("=")
                found[name] = value
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def money_history(app: Any, client: Any, sandbox: Any, settlements: int = 3) -> list[str]:
    """The demo family with a binding, ``settlements`` settlements (co-pay from the owner) and a
    partial refund of the first: journals, payments, refunds, notices and deliveries all exist."""
    fresh(app)
    make_binding(app, OWNER, CHILD, "child")
    token = sign_in(client, sandbox, OWNER)
    numbers = []
    for _ in range(settlements):
        response = settle(client, issue(client, token, person_id(app, CHILD)))
        assert response.status_code == 201, response.get_json()
        numbers.append(response.get_json()["settlement_no"])
    assert refund(client, numbers[0], 500).status_code == 201
    return numbers
