"""``bench.notify --mode inprocess`` measures what a deployment without Redis does: the process that
commits hands its notices to its own send threads at once, and the CPU those threads spend per push
is reported (it printed ``nan``, and the pushes waited for a sweeper)."""

from __future__ import annotations

import math
import os
import threading
import time

import pytest

from bench import notify
from notify.dispatch import SWEEP_INTERVAL_SECONDS


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_delivery_cpu_counts_the_other_threads_not_the_callers() -> None:
    before = notify._delivery_cpu_seconds()
    _spin(0.3)  # the caller's own work: not delivery
    assert notify._delivery_cpu_seconds() - before < 0.1
    worker = threading.Thread(target=_spin, args=(0.3,))
    worker.start()
    worker.join()  # counted even once the thread has ended
    assert notify._delivery_cpu_seconds() - before == pytest.approx(0.3, abs=0.1)


@pytest.mark.slow
@pytest.mark.postgres(reason="bench.notify makes its scratch database on a PostgreSQL server")
def test_inprocess_mode_reports_the_producers_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_DATABASE_URL", os.environ["TEST_DATABASE_URL"])
    (row,) = notify.run("inprocess", backlog=0, rates=[20.0], seconds=2.0, workers=[1], producers=2,
                        producer="settlement")
    assert row.committed > 20 and row.pushed == row.committed
    assert math.isfinite(row.cpu_per_push_ms) and row.cpu_per_push_ms > 0
    # handed over at commit: not waiting for a sweep (every SWEEP_INTERVAL_SECONDS)
    assert row.p50 < SWEEP_INTERVAL_SECONDS * 1000 / 4
