"""Delivering deduction notices (R15): exactly once, retried, refreshed, refused, crash-safe.

Runs on the embedded default (SQLite, in-process dispatcher drained synchronously) and on
PostgreSQL; the local emulator stands in for WeChat and Alipay.
"""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

import pytest

from notify import delivery as delivery_module
from notify import dispatch
from notify.channels import NoticeView
from notify.channels import alipay as alipay_channel
from notify.channels import wechat as wechat_channel
from notify.retry import MAX_GAP_SECONDS, RETRY_WINDOW, after_transient_failure, retry_delay_seconds
from sandbox.push import build_event_push, sent_event
from tests.conftest import ALIPAY_TEMPLATE_DEDUCTION, TEMPLATE_DEDUCTION, TEMPLATE_RECEIPT
from tests.notify_helpers import NotifyWorld

CALLBACK = "/api/v1/callbacks/wechat"


# clock, world, notifier: tests/integration/conftest.py


def family(world, *, owner_alipay=False):
    owner = world.person("张伟", alipay=owner_alipay)
    child = world.person("张小明")
    return owner, child


def sends(sandbox) -> int:
    return sandbox.call_count("wechat.subscribe_send")


def push_sent_event(client, openid, template_id, msgid, error_code="0"):
    push = build_event_push(sent_event(openid, [(template_id, msgid)], error_code=error_code),
                            token="test-msg-token")
    response = client.post(push.url(CALLBACK), data=push.body.encode(), headers=push.headers)
    assert response.status_code == 200, response.get_data(as_text=True)


# --- exactly one push per movement ----------------------------------------------------------------


def test_a_deduction_pushes_exactly_one_message_per_owner_and_channel_R15(world, notifier, sandbox):
    owner, child = family(world, owner_alipay=True)
    spouse = world.person("李娜")
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    world.subscribe(owner, "alipay", ALIPAY_TEMPLATE_DEDUCTION)
    world.subscribe(spouse, "wechat", TEMPLATE_DEDUCTION)

    settled = world.settle(child, [(owner, "copay", 1230), (spouse, "copay", 770)])
    notifier.drain()
    notifier.committed(settled.delivery_ids)  # a second hand-over of the same rows …
    notifier.drain()  # … and a second sweep send nothing more

    (to_owner,) = sandbox.sent_messages(to=owner.openid)
    assert len(sandbox.sent_messages(platform="alipay", to=owner.alipay_user_id)) == 1
    assert len(sandbox.sent_messages(to=spouse.openid)) == 1
    assert to_owner.template_id == TEMPLATE_DEDUCTION
    assert to_owner.data["amount5"] == "¥12.30"
    assert to_owner.data["name2"] == "**明"
    assert to_owner.data["character_string8"] == settled.settlement_no
    assert to_owner.page.startswith("pages/records/detail?settlement_no=" + settled.settlement_no)
    states = {(d.channel, d.state) for d in world.deliveries(settled.delivery_ids)}
    assert states == {("wechat", "sent"), ("alipay", "sent")}
    assert all(d.attempts == 1 for d in world.deliveries(settled.delivery_ids))


def test_a_refund_credit_pushes_exactly_one_message_to_the_owner_R15(world, notifier, sandbox):
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, count=2)
    settled = world.settle(child, [(owner, "copay", 5000)])
    notifier.drain()

    refund_ids = world.refund(settled, child, [(owner, "copay", 2000)])
    notifier.drain()
    notifier.drain()

    deduction, refund = sandbox.sent_messages(to=owner.openid)
    assert refund.data["phrase1"] == "退款入账" and refund.data["amount5"] == "¥20.00"
    assert deduction.data["phrase1"] == "共济支付"
    assert [d.state for d in world.deliveries(refund_ids)] == ["sent"]
    kinds = [n.kind for n in world.notices(owner.person_id)]
    assert kinds == ["deduction", "refund"]


def test_a_delivery_already_sent_never_reaches_the_platform_again(world, notifier, sandbox):
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, mode="long_term")
    settled = world.settle(child, [(owner, "copay", 100)])
    notifier.drain()
    before = sends(sandbox)

    outcome = notifier.deliverer.deliver(settled.delivery_ids[0])

    assert outcome.state == "skipped"
    assert sends(sandbox) == before


def test_concurrent_workers_on_one_delivery_push_it_once(world, notifier, sandbox):
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, count=3)
    (delivery_id,) = world.settle(child, [(owner, "copay", 100)]).delivery_ids
    barrier = threading.Barrier(4)
    outcomes = []

    def work():
        barrier.wait()
        outcomes.append(notifier.deliverer.deliver(delivery_id).state)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["sent", "skipped", "skipped", "skipped"]
    assert len(sandbox.sent_messages(to=owner.openid)) == 1
    assert world.consent(owner, "wechat", TEMPLATE_DEDUCTION)["one_time_credits"] == 2


def test_the_beneficiary_gets_a_receipt_pushed_when_a_receipt_template_is_configured_R15(make_app, sandbox):
    other = make_app(WECHAT_TEMPLATE_RECEIPT=TEMPLATE_RECEIPT)
    with other.app_context():
        world = NotifyWorld(other, sandbox)
        owner, child = family(world)
        world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
        world.subscribe(child, "wechat", TEMPLATE_RECEIPT)
        world.settle(child, [(owner, "copay", 990)], receipt_channels=("wechat",))
        other.extensions["domain"].notifier.drain()

    (receipt,) = sandbox.sent_messages(to=child.openid)
    assert receipt.template_id == TEMPLATE_RECEIPT
    assert receipt.data["amount4"] == "¥9.90" and "amount6" not in receipt.data  # no owner balance in it
    assert len(sandbox.sent_messages(to=owner.openid)) == 1


def test_without_a_receipt_template_the_receipt_is_only_in_the_inbox_R15(world, notifier, sandbox):
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)

    settled = world.settle(child, [(owner, "copay", 990)])
    notifier.drain()

    assert [n.kind for n in world.notices(child.person_id)] == ["receipt"]
    assert len(settled.delivery_ids) == 1  # the owner's push only
    assert sandbox.sent_messages(to=child.openid) == []


def test_without_redis_the_in_process_dispatcher_sends_committed_and_left_over_rows(app, sandbox, monkeypatch):
    monkeypatch.setattr(dispatch, "SWEEP_INTERVAL_SECONDS", 0.05)
    background = dispatch.InProcessNotifier(app, background=True)
    world = NotifyWorld(app, sandbox)
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, mode="long_term")
    left_over = world.settle(child, [(owner, "copay", 100)], notify=False)  # e.g. from before a restart

    committed = world.settle(child, [(owner, "copay", 200)], notify=False)
    background.committed(committed.delivery_ids)
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    while datetime.now(UTC) < deadline and {d.state for d in world.deliveries()} != {"sent"}:
        threading.Event().wait(0.05)
    background.stop()

    assert [d.state for d in world.deliveries(left_over.delivery_ids + committed.delivery_ids)] == ["sent", "sent"]
    assert len(sandbox.sent_messages(to=owner.openid)) == 2


# --- consent ---------------------------------------------------------------------------------------


def test_without_consent_the_notice_stays_in_the_inbox_and_nothing_is_pushed_R15(world, notifier, sandbox):
    owner, child = family(world)
    before = sends(sandbox)

    settled = world.settle(child, [(owner, "copay", 100)])
    notifier.drain()

    (delivery,) = world.deliveries(settled.delivery_ids)
    assert delivery.state == "no_consent"
    assert sends(sandbox) == before
    assert [n.kind for n in world.notices(owner.person_id)] == ["deduction"]


def test_each_one_time_accept_pays_for_exactly_one_push_R15(world, notifier, sandbox):
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, count=2)

    ids = [world.settle(child, [(owner, "copay", 100 + i)]).delivery_ids[0] for i in range(3)]
    notifier.drain()

    assert [d.state for d in world.deliveries(ids)] == ["sent", "sent", "no_consent"]
    assert len(sandbox.sent_messages(to=owner.openid)) == 2
    assert world.consent(owner, "wechat", TEMPLATE_DEDUCTION)["one_time_credits"] == 0


def test_a_long_term_subscription_covers_every_push_R15(world, notifier, sandbox):
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, mode="long_term")

    ids = [world.settle(child, [(owner, "copay", 100 + i)]).delivery_ids[0] for i in range(3)]
    notifier.drain()

    assert [d.state for d in world.deliveries(ids)] == ["sent"] * 3


def test_when_wechat_says_43101_the_notice_is_no_consent_and_our_credits_are_cleared(world, notifier, sandbox):
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, count=3)
    sandbox.revoke_wechat_consent(owner.openid, TEMPLATE_DEDUCTION)  # we did not hear of it

    (first_id,) = world.settle(child, [(owner, "copay", 100)]).delivery_ids
    notifier.drain()
    before = sends(sandbox)
    (second_id,) = world.settle(child, [(owner, "copay", 200)]).delivery_ids
    notifier.drain()

    first, second = world.deliveries([first_id, second_id])
    assert (first.state, first.last_error_code) == ("no_consent", "43101")
    assert (second.state, second.last_error_code) == ("no_consent", "no_consent")
    assert sends(sandbox) == before  # not even tried
    assert world.consent(owner, "wechat", TEMPLATE_DEDUCTION)["one_time_credits"] == 0


def test_alipay_without_consent_is_recorded_as_no_consent(world, notifier, sandbox):
    owner = world.person("张伟", wechat=False, alipay=True)
    child = world.person("张小明")
    world.subscribe(owner, "alipay", ALIPAY_TEMPLATE_DEDUCTION)
    sandbox.revoke_alipay_consent(owner.alipay_user_id, ALIPAY_TEMPLATE_DEDUCTION)

    (delivery_id,) = world.settle(child, [(owner, "copay", 100)]).delivery_ids
    notifier.drain()

    delivery = world.delivery(delivery_id)
    assert (delivery.state, delivery.last_error_code) == ("no_consent", "USER_NOT_SUBSCRIBED")


# --- retries --------------------------------------------------------------------------------------


def test_transient_errors_are_retried_with_backoff_then_sent_once_R15(world, notifier, sandbox, clock):
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    sandbox.inject_fault("wechat.subscribe_send", errcode=-1)
    sandbox.inject_fault("wechat.subscribe_send", errcode=45009)
    sandbox.inject_fault("wechat.subscribe_send", http_status=502)
    (delivery_id,) = world.settle(child, [(owner, "copay", 100)]).delivery_ids
    started = clock.now

    notifier.drain()
    first = world.delivery(delivery_id)
    notifier.drain()  # not due yet: nothing happens
    assert (first.state, first.attempts, first.last_error_code) == ("pending", 1, "-1")
    assert world.delivery(delivery_id).attempts == 1
    gaps = [(first.next_attempt_at - started).total_seconds()]
    for _ in range(3):
        current = world.delivery(delivery_id)
        clock.now = current.next_attempt_at
        notifier.drain()
        after = world.delivery(delivery_id)
        if after.state == "pending":
            gaps.append((after.next_attempt_at - clock.now).total_seconds())

    final = world.delivery(delivery_id)
    assert (final.state, final.attempts, final.last_error_code) == ("sent", 4, None)
    assert len(sandbox.sent_messages(to=owner.openid)) == 1
    # 30 s × 2^(n−1), ±20 %
    assert [round(g / (30 * 2 ** n), 2) for n, g in enumerate(gaps)] == pytest.approx([1, 1, 1], abs=0.2)
    assert world.consent(owner, "wechat", TEMPLATE_DEDUCTION)["one_time_credits"] == 0


def test_a_platform_that_stays_down_is_given_up_after_24_hours_R15(world, notifier, sandbox, clock):
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    sandbox.set_down("wechat")
    (delivery_id,) = world.settle(child, [(owner, "copay", 100)]).delivery_ids
    started = clock.now

    notifier.drain()
    while (current := world.delivery(delivery_id)).state == "pending":
        assert (current.next_attempt_at - clock.now).total_seconds() <= MAX_GAP_SECONDS
        clock.now = current.next_attempt_at
        notifier.drain()

    final = world.delivery(delivery_id)
    assert final.state == "failed" and final.last_error_code == "http_5xx"
    assert final.last_error.startswith(f"gave up after {final.attempts} attempts")
    assert clock.now - started <= RETRY_WINDOW
    assert final.attempts > 20
    assert world.consent(owner, "wechat", TEMPLATE_DEDUCTION)["one_time_credits"] == 1  # never used


def test_an_expired_access_token_is_refreshed_once_and_the_push_goes_out_R15(world, notifier, sandbox):
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    notifier.deliverer.channels["wechat"].gateway.access_token()  # a token is cached
    sandbox.inject_fault("wechat.subscribe_send", errcode=42001)
    tokens_before = sandbox.call_count("wechat.stable_token")

    (delivery_id,) = world.settle(child, [(owner, "copay", 100)]).delivery_ids
    notifier.drain()

    delivery = world.delivery(delivery_id)
    assert (delivery.state, delivery.attempts) == ("sent", 1)
    assert sandbox.call_count("wechat.stable_token") > tokens_before
    assert len(sandbox.sent_messages(to=owner.openid)) == 1


def test_a_token_still_refused_after_the_refresh_is_retried_later(world, notifier, sandbox):
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    sandbox.inject_fault("wechat.subscribe_send", errcode=40001, times=2)

    (delivery_id,) = world.settle(child, [(owner, "copay", 100)]).delivery_ids
    notifier.drain()

    delivery = world.delivery(delivery_id)
    assert (delivery.state, delivery.last_error_code) == ("pending", "40001")
    assert world.consent(owner, "wechat", TEMPLATE_DEDUCTION)["one_time_credits"] == 1  # given back


@pytest.mark.parametrize(("errcode", "why"), [(47003, "bad data"), (40037, "bad template")])
def test_permanent_errors_are_recorded_with_the_upstream_code_and_not_retried_R15(
        world, notifier, sandbox, clock, errcode, why):
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    sandbox.inject_fault("wechat.subscribe_send", errcode=errcode)
    (delivery_id,) = world.settle(child, [(owner, "copay", 100)]).delivery_ids

    notifier.drain()
    clock.advance(24 * 3600)
    before = sends(sandbox)
    notifier.drain()

    delivery = world.delivery(delivery_id)
    assert (delivery.state, delivery.last_error_code, delivery.attempts) == ("failed", str(errcode), 1), why
    assert sends(sandbox) == before
    # The platform sent nothing, so the one-time credit is still there.
    assert world.consent(owner, "wechat", TEMPLATE_DEDUCTION)["one_time_credits"] == 1


def test_an_openid_wechat_does_not_know_fails_with_40003(world, notifier, sandbox):
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    sandbox.reset()  # WeChat forgets the user

    (delivery_id,) = world.settle(child, [(owner, "copay", 100)]).delivery_ids
    notifier.drain()

    delivery = world.delivery(delivery_id)
    assert (delivery.state, delivery.last_error_code) == ("failed", "40003")


# --- crash between send and mark -------------------------------------------------------------------


class ProcessDied(BaseException):
    """Stands in for the worker process being killed."""


def test_a_crash_between_send_and_mark_never_pushes_twice(world, notifier, sandbox, clock, monkeypatch, client):
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, count=2)
    (delivery_id,) = world.settle(child, [(owner, "copay", 100)]).delivery_ids

    def die(*args, **kwargs):
        raise ProcessDied()

    monkeypatch.setattr(delivery_module.Deliverer, "_mark_sent", die)
    with pytest.raises(ProcessDied):
        notifier.drain()
    monkeypatch.undo()
    monkeypatch.setattr(notifier.deliverer, "clock", clock)
    assert world.delivery(delivery_id).state == "sending"

    notifier.drain()  # lease still running: nobody touches it
    clock.advance(notifier.deliverer.lease_seconds + 1)
    notifier.drain()  # lease over: given up as unknown, not resent
    clock.advance(24 * 3600)
    notifier.drain()

    (message,) = sandbox.sent_messages(to=owner.openid)
    delivery = world.delivery(delivery_id)
    assert (delivery.state, delivery.last_error_code) == ("failed", "outcome_unknown")

    # WeChat's delivery report names the message: the delivery is known to be sent after all.
    push_sent_event(client, owner.openid, TEMPLATE_DEDUCTION, message.msgid)
    delivery = world.delivery(delivery_id)
    assert (delivery.state, delivery.msgid) == ("sent", message.msgid)
    assert delivery.confirmed_at is not None
    assert world.consent(owner, "wechat", TEMPLATE_DEDUCTION)["one_time_credits"] == 1


def test_a_timed_out_send_that_went_through_is_confirmed_by_wechat_and_not_sent_again(
        app, world, notifier, sandbox, clock, client):
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, count=2)
    timeout = app.config["PLATFORM_TIMEOUT_SECONDS"]
    sandbox.inject_fault("wechat.subscribe_send", delay=timeout + 0.5)  # slow, but it does send
    (delivery_id,) = world.settle(child, [(owner, "copay", 100)]).delivery_ids

    notifier.drain()
    assert world.delivery(delivery_id).last_error_code == "timeout"
    (message,) = _wait_for_messages(sandbox, owner.openid, 1)
    push_sent_event(client, owner.openid, TEMPLATE_DEDUCTION, message.msgid)
    clock.advance(3600)
    notifier.drain()

    assert len(sandbox.sent_messages(to=owner.openid)) == 1
    delivery = world.delivery(delivery_id)
    assert (delivery.state, delivery.msgid) == ("sent", message.msgid)
    assert world.consent(owner, "wechat", TEMPLATE_DEDUCTION)["one_time_credits"] == 1


def test_a_timed_out_send_that_did_not_go_through_is_retried(app, world, notifier, sandbox, clock):
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    timeout = app.config["PLATFORM_TIMEOUT_SECONDS"]
    sandbox.inject_fault("wechat.subscribe_send", delay=timeout + 0.5, http_status=502)
    (delivery_id,) = world.settle(child, [(owner, "copay", 100)]).delivery_ids

    notifier.drain()
    clock.advance(3600)
    notifier.drain()

    assert len(sandbox.sent_messages(to=owner.openid)) == 1
    assert world.delivery(delivery_id).state == "sent"


def _pushed_to_the_owner(world, notifier):
    """张伟 subscribed, a co-pay for the child, its WeChat message sent: (owner, delivery id, MsgID)."""
    owner, child = family(world)
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    (delivery_id,) = world.settle(child, [(owner, "copay", 100)]).delivery_ids
    notifier.drain()
    return owner, delivery_id, world.delivery(delivery_id).msgid


def test_a_sent_event_reporting_a_failure_marks_the_delivery_failed(world, notifier, sandbox, client):
    owner, delivery_id, msgid = _pushed_to_the_owner(world, notifier)

    push_sent_event(client, owner.openid, TEMPLATE_DEDUCTION, msgid, error_code="10005")

    delivery = world.delivery(delivery_id)
    assert (delivery.state, delivery.last_error_code) == ("failed", "sent_event_10005")


def test_a_sent_event_changes_only_the_deliveries_of_the_user_it_names(world, notifier, sandbox, client):
    """A sent event names its user (FromUserName); a MsgID of another user's message in it is not
    that user's delivery and is ignored, not marked failed or confirmed."""
    _, delivery_id, msgid = _pushed_to_the_owner(world, notifier)
    stranger = world.person("李娜")

    push_sent_event(client, stranger.openid, TEMPLATE_DEDUCTION, msgid, error_code="10005")

    delivery = world.delivery(delivery_id)
    assert (delivery.state, delivery.last_error_code, delivery.confirmed_at) == ("sent", None, None)


def _wait_for_messages(sandbox, to, count):
    deadline = datetime.now(UTC) + timedelta(seconds=5)
    while len(found := sandbox.sent_messages(to=to)) < count and datetime.now(UTC) < deadline:
        threading.Event().wait(0.05)
    return found


# --- pure parts: backoff and rendering --------------------------------------------------------------


def test_the_retry_gap_doubles_with_20_percent_jitter_and_never_exceeds_an_hour_R15():
    rng = random.Random(1)
    for attempts in range(1, 12):
        expected = min(30 * 2 ** (attempts - 1), 3600 / 0.8)
        for _ in range(50):
            gap = retry_delay_seconds(attempts, 30, rng)
            assert 0.8 * expected <= gap <= min(1.2 * expected, MAX_GAP_SECONDS)
    assert retry_delay_seconds(200, 30, rng) == MAX_GAP_SECONDS


def test_no_retry_is_planned_past_the_24_hour_window_R15():
    now = datetime(2025, 3, 1, tzinfo=UTC)
    rng = random.Random(2)
    assert after_transient_failure(1, now, now + timedelta(hours=1), 30, rng).retry
    assert not after_transient_failure(20, now, now + timedelta(minutes=30), 30, rng).retry


def _notice(**content):
    base = {"beneficiary": "**明", "relationship": "child", "institution": "文山州人民医院", "amount_fen": 1230,
            "balance_after_fen": 348770, "time": "2025-03-01T01:30:00+00:00", "settlement_no": "S20250301000001"}
    return NoticeView(7, content.pop("kind", "deduction"), "S20250301000001", {**base, **content})


def test_wechat_data_fits_each_keyword_type_and_reads_in_shanghai_time_R15():
    data = wechat_channel.render_data(_notice(institution="云南省文山壮族苗族自治州人民医院门诊部药房第二分部",
                                              beneficiary="*" * 14 + "明"))

    assert data == {
        "phrase1": "共济支付", "name2": "*" * 10, "phrase3": "子女",
        "thing4": "云南省文山壮族苗族自治州人民医院门诊部…", "amount5": "¥12.30", "amount6": "¥3487.70",
        "time7": "2025-03-01 09:30", "character_string8": "S20250301000001",
    }
    assert len(data["thing4"]) == 20


def test_an_own_account_payment_and_a_refund_say_what_happened():
    own = wechat_channel.render_data(_notice(relationship="self"))
    refund = wechat_channel.render_data(_notice(kind="refund"))

    assert (own["phrase1"], own["phrase3"]) == ("个账支付", "本人")
    assert refund["phrase1"] == "退款入账"


def test_alipay_keywords_are_in_template_order_in_yuan_and_at_most_50_characters_R15():
    data = alipay_channel.render_data(_notice(institution="医" * 80))

    assert list(data) == [f"keyword{i}" for i in range(1, 9)]
    assert data["keyword5"] == "12.30元" and data["keyword6"] == "3487.70元"
    assert data["keyword7"] == "2025-03-01 09:30"
    assert all(len(value) <= 50 for value in data.values())
