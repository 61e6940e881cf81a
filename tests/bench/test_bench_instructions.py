"""``bench.instructions`` counts a path's instructions under valgrind end to end (a short run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.postgres("the benchmark makes a scratch PostgreSQL database"), pytest.mark.slow]


@pytest.mark.skipif(shutil.which("callgrind_control") is None, reason="valgrind is not installed")
def test_a_short_run_counts_the_service_and_its_reference(redis_url):
    if redis_url is None:
        pytest.skip("needs Redis (TEST_REDIS_URL)")
    bench_redis = redis_url.rsplit("/", 1)[0] + "/13"  # a database of its own: the benchmark empties it
    done = subprocess.run([sys.executable, "-m", "bench.instructions", "--only", "me", "--requests", "3",
                           "--families", "5"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "BENCH_REDIS_URL": bench_redis})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    row = re.search(r"\| me \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)× \|", done.stdout)
    assert row, done.stdout
    service, reference, ratio = map(float, row.groups())
    assert service > reference > 0.3 and abs(reference / service - ratio) < 0.01
