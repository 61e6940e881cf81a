"""Fixtures of the notice-delivery modules (test_notify_delivery.py, test_notify_poison.py): the
deliverer on a fake clock with a seeded jitter, the world of persons and settlements it delivers for
(tests/notify_helpers.py), and the app's notifier. A module that needs another world defines its own."""

from __future__ import annotations

import random

import pytest

from tests.notify_helpers import FakeClock, NotifyWorld


@pytest.fixture
def clock(app, monkeypatch):
    clock = FakeClock()
    deliverer = app.extensions["domain"].notifier.deliverer
    monkeypatch.setattr(deliverer, "clock", clock)
    monkeypatch.setattr(deliverer, "rng", random.Random(15))
    return clock


@pytest.fixture
def world(app, sandbox, clock):
    yield NotifyWorld(app, sandbox, clock)
    sandbox.clear_faults()


@pytest.fixture
def notifier(app):
    return app.extensions["domain"].notifier
