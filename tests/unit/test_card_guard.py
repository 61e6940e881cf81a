"""The card look-up limit itself (app/services/card_guard.py, R12, R19): slots reserved before the
look-up, kept by a failure, given back by a success or an error — in memory and, with
``TEST_REDIS_URL``, in Redis. The race through the whole API is in
tests/integration/test_card_concurrency.py."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app import errors
from app.services import card_guard
from app.services.card_guard import CardLookupGuard

CLOSED_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: every call is refused


@pytest.fixture(params=["memory", "redis"])
def make_guard(request, monkeypatch):
    monkeypatch.setattr(card_guard, "BUSY_WAIT_SECONDS", 0.2)
    if request.param == "memory":
        yield lambda limit: CardLookupGuard(None, limit)
        return
    url = request.getfixturevalue("redis_url")
    if not url:
        pytest.skip("needs Redis (TEST_REDIS_URL)")
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    yield lambda limit: CardLookupGuard(client, limit)
    client.flushdb()
    client.close()


def fail_one(guard, institution_id=1):
    with guard.look_up(institution_id) as attempt:
        attempt.failed()


def find_one(guard, institution_id=1):
    with guard.look_up(institution_id):
        pass


def storage_down(*_args):
    raise ConnectionError("the storage went away")


def refusal(guard, institution_id=1):
    with pytest.raises(errors.RateLimited) as caught:
        find_one(guard, institution_id)
    assert caught.value.details["group"] == "card"
    return caught.value


def test_look_ups_held_together_admit_no_more_than_the_limit(make_guard):
    guard = make_guard((3, 600))
    burst = 10
    held = threading.Barrier(burst, timeout=0.5)  # an admitted look-up waits for the others

    def look_up(_):
        try:
            with guard.look_up(1) as attempt:
                try:
                    held.wait()
                except threading.BrokenBarrierError:
                    pass
                attempt.failed()
            return "no such card"
        except errors.RateLimited:
            return "limited"

    with ThreadPoolExecutor(max_workers=burst) as pool:
        answers = list(pool.map(look_up, range(burst)))
    assert answers.count("no such card") == 3 and answers.count("limited") == burst - 3
    assert 590 <= refusal(guard).details["retry_after"] <= 600


def test_successes_and_errors_give_their_slot_back_failures_keep_it(make_guard):
    guard = make_guard((2, 600))
    for _ in range(5):
        find_one(guard)
    with pytest.raises(ValueError), guard.look_up(1):
        raise ValueError("the database broke mid-look-up: nothing was answered about the card")
    fail_one(guard)
    find_one(guard)
    fail_one(guard)
    refusal(guard)
    find_one(guard, institution_id=2)  # another institution is not affected


def test_a_look_up_in_flight_holding_the_last_slot_is_waited_for_not_counted(make_guard):
    guard = make_guard((1, 600))
    inside, done = threading.Event(), threading.Event()

    def slow_success():
        with guard.look_up(1):
            inside.set()
            time.sleep(0.05)
        done.set()

    worker = threading.Thread(target=slow_success)
    worker.start()
    inside.wait(2)
    find_one(guard)  # waits the 50 ms for the slot, then is admitted
    assert done.is_set()
    worker.join()
    fail_one(guard)
    assert refusal(guard).details["retry_after"] > 1


def test_a_slot_held_longer_than_the_wait_is_refused_briefly(make_guard):
    guard = make_guard((1, 600))
    with guard.look_up(1):
        started = time.monotonic()
        refused = refusal(guard)
        assert 0.15 < time.monotonic() - started < 1.5
    assert refused.details["retry_after"] == card_guard.BUSY_RETRY_AFTER_SECONDS
    assert refused.message == "Too many card look-ups are under way; try again shortly."
    find_one(guard)


def test_a_reservation_never_given_back_counts_until_the_window_passes_it(make_guard, monkeypatch, caplog):
    guard = make_guard((1, 1))
    with monkeypatch.context() as patch:
        patch.setattr(guard.slots, "release", storage_down)
        find_one(guard)  # the look-up's answer stands; its reservation could not be given back
    assert "a reservation stays counted" in caplog.text
    refusal(guard)
    time.sleep(1.1)
    find_one(guard)
    fail_one(guard)
    refusal(guard)
    time.sleep(1.1)
    find_one(guard)


def test_a_lost_reservation_soon_counts_as_a_failure_made_when_it_was_reserved(make_guard, monkeypatch):
    monkeypatch.setattr(card_guard, "STALE_RESERVATION_SECONDS", 0.1)
    guard = make_guard((1, 600))
    with monkeypatch.context() as patch:
        patch.setattr(guard.slots, "release", storage_down)
        find_one(guard)
    time.sleep(0.15)
    started = time.monotonic()
    refused = refusal(guard)
    assert time.monotonic() - started < 0.1  # not waited for as if it were still in flight
    assert refused.message == "Too many card look-ups failed; try again later."
    assert 590 <= refused.details["retry_after"] <= 600


def test_with_the_limit_off_nothing_is_counted(make_guard):
    guard = make_guard(None)
    for _ in range(20):
        fail_one(guard)


def test_with_redis_down_card_look_ups_are_refused_not_let_through(caplog):
    import redis

    guard = CardLookupGuard(redis.Redis.from_url(CLOSED_REDIS), (3, 600))
    with pytest.raises(errors.UpstreamUnavailable) as caught:
        find_one(guard)
    assert caught.value.details == {"unavailable": "rate_limiter", "retry_after": 5}
    assert "fail closed" in caplog.text
