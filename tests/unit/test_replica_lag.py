"""The replica lag measure (app/replica.py, ``ReplayLag``): samples of the primary's flushed WAL position
and clock against what the replica has replayed. The same cases on a real primary and replica, the
WAL receiver stalled by SIGSTOP, are in tests/integration/test_read_replica.py."""

from __future__ import annotations

import math

import pytest

from app.replica import Lag, ReplayLag

T0 = 1_700_000_000.0  # the primary's clock, seconds


def test_an_idle_primary_never_looks_lagging():
    lag = ReplayLag()
    assert lag.measure(1000, T0, 1000, T0 - 3600) == Lag(0.0, 0.0)
    # An hour later nothing was written: the replica has all there is, however old its last commit.
    assert lag.measure(1000, T0 + 3600, 1000, T0 - 3600) == Lag(0.0, 0.0)


def test_the_replica_having_replayed_all_it_received_is_not_enough():
    """The bug this measure replaces: a stalled link, the replica replayed all it got. Checks keep
    coming: the lag grows from the last sample it had, whatever the replica thinks of itself."""
    lag = ReplayLag()
    assert lag.measure(1000, T0, 1000, T0 - 0.5) == Lag(0.0, 0.0)
    # The link stalls; the primary writes on (2000, 3000, …); the replica stays at 1000.
    assert lag.measure(2000, T0 + 1, 1000, T0 - 0.5) == Lag(0.0, 1.0)
    assert lag.measure(3000, T0 + 2, 1000, T0 - 0.5) == Lag(1.0, 2.0)
    assert lag.measure(3000, T0 + 7, 1000, T0 - 0.5) == Lag(6.0, 7.0)


def test_the_first_check_after_a_quiet_spell_sees_the_whole_gap():
    """No check for 5 minutes (no record reads in this process) while the replica was cut off: the
    last sample it replayed is 5 minutes old, so lag is at most that — and not known to be small."""
    lag = ReplayLag()
    lag.measure(1000, T0, 1000, T0 - 1)
    found = lag.measure(9000, T0 + 300, 1000, T0 - 1)
    assert found.low == 0.0 and found.high == 300.0


def test_a_recent_replayed_commit_bounds_the_lag():
    """A write in flight at the check after a quiet spell of checks: the replica's last replayed
    commit is a moment old, so it is at most that far behind."""
    lag = ReplayLag()
    lag.measure(1000, T0, 1000, T0 - 1)
    found = lag.measure(9000, T0 + 300, 8800, T0 + 299.8)
    assert found.low == 0.0 and found.high == pytest.approx(0.2)


def test_catching_up_part_way_measures_from_the_oldest_sample_still_missing():
    lag = ReplayLag()
    lag.measure(1000, T0, 1000, None)
    for second, lsn in enumerate((2000, 3000, 4000, 5000), start=1):
        lag.measure(lsn, T0 + second, 1000, None)
    # The replica replays up to 3500: it has the sample of T0 + 2 (3000), lacks the one of T0 + 3 (4000).
    assert lag.measure(6000, T0 + 5, 3500, None) == Lag(2.0, 3.0)
    assert lag.measure(6000, T0 + 6, 6000, None) == Lag(0.0, 0.0)
    assert len(lag._samples) == 1  # caught up: only the newest sample is kept


def test_unknown_when_nothing_replayed_is_known():
    lag = ReplayLag()
    found = lag.measure(2000, T0, 1000, None)  # the first check: behind, and no replayed commit yet
    assert found.low == 0.0 and found.high == math.inf


def test_a_primary_whose_wal_went_back_starts_the_samples_over():
    """After a failover or a restore the new primary's positions are not comparable with old samples."""
    lag = ReplayLag()
    lag.measure(5000, T0, 4000, None)
    lag.measure(6000, T0 + 1, 4000, None)
    found = lag.measure(3000, T0 + 2, 2500, T0 + 1.5)
    assert found == Lag(0.0, 0.5)  # kept, the old samples would say it lacks WAL flushed at T0 (2 s)
    assert len(lag._samples) == 1


def test_samples_are_bounded():
    lag = ReplayLag(keep=3)
    lag.measure(1000, T0, 1000, None)
    for second in range(1, 10):
        lag.measure(1000 + second, T0 + second, 1000, None)  # the replica never moves
    assert len(lag._samples) == 3
    assert lag.measure(2000, T0 + 10, 1000, T0 - 1).high == 11.0  # the replayed commit still bounds it
