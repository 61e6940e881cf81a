"""Every benchmark is a command line that answers ``--help`` (and refuses a wrong argument) without
touching a database: none of them may take ``--help`` for a size and crash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py")
                 if p.stem not in {"__init__", "baseline_app", "scratch", "loadgen"})


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "BENCH_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"})


@pytest.mark.parametrize("bench", BENCHES)
def test_help_prints_the_usage(bench: str) -> None:
    done = _run(f"bench.{bench}", "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:"), done.stdout[:500]


@pytest.mark.parametrize("bench", ["console_lookup", "load_registry"])
def test_the_registry_size_is_an_option(bench: str) -> None:
    assert "--persons" in _run(f"bench.{bench}", "--help").stdout
    refused = _run(f"bench.{bench}", "--persons", "many")
    assert refused.returncode == 2 and "invalid" in refused.stderr
