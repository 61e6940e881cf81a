"""One bad delivery must not hold up the others (R15): poison rows and failures half-way through a batch.

A worker claims up to ``CLAIM_CHUNK`` deliveries in one transaction and a job carries up to 25; a
row that makes the claim raise, or a mark that raises, must cost only that row — not its chunk
neighbours (often the other owner of the same settlement), not the rest of the job, and not every
sweep from then on. Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import update

from app.extensions import app_session
from models import Notice
from notify import consent as consent_module
from notify import delivery as delivery_module
from tests.conftest import TEMPLATE_DEDUCTION

# clock, world, notifier: tests/integration/conftest.py


def _corrupt_content(notice_id: int, content) -> None:
    with app_session() as session, session.begin():
        session.execute(update(Notice).where(Notice.id == notice_id).values(content=content))


def test_a_notice_that_cannot_be_rendered_fails_alone_and_its_neighbours_are_pushed(world, notifier, sandbox):
    owner, spouse, child = world.person("张伟"), world.person("李娜"), world.person("张小明")
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    world.subscribe(spouse, "wechat", TEMPLATE_DEDUCTION)
    settled = world.settle(child, [(owner, "copay", 1230), (spouse, "copay", 770)], notify=False)
    poison, healthy = world.deliveries(settled.delivery_ids)
    # A notice whose stored content is not an object (written by hand, by an old version, …).
    _corrupt_content(poison.notice_id, ["not", "an", "object"])

    notifier.drain()  # the sweep's batch holds both rows
    notifier.drain()

    assert len(sandbox.sent_messages(to=spouse.openid)) == 1
    assert sandbox.sent_messages(to=owner.openid) == []
    poison, healthy = world.deliveries(settled.delivery_ids)
    assert healthy.state == "sent"
    # Given up with a code staff can see, not left pending to be queued again by every sweep.
    assert (poison.state, poison.last_error_code) == ("failed", "render_error")
    assert poison.attempts == 1
    # The credit was not spent on a push that never went out.
    assert world.consent(owner, "wechat", TEMPLATE_DEDUCTION)["one_time_credits"] == 1


def test_a_poison_row_in_the_first_chunk_does_not_strand_the_later_chunks_of_a_job(world, notifier, sandbox):
    owner, child = world.person("张伟"), world.person("张小明")
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION, count=8)
    ids = [world.settle(child, [(owner, "copay", 100 + i)], notify=False).delivery_ids[0] for i in range(8)]
    _corrupt_content(world.delivery(ids[0]).notice_id, "a string, not an object")

    outcomes = notifier.deliverer.deliver_batch(ids)  # one sweeper job: chunks of CLAIM_CHUNK

    assert [o.state for o in outcomes] == ["failed"] + ["sent"] * 7
    assert len(sandbox.sent_messages(to=owner.openid)) == 7


def test_a_mark_that_fails_costs_only_its_own_row(world, notifier, sandbox, monkeypatch):
    owner, spouse, child = world.person("张伟"), world.person("李娜"), world.person("张小明")
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    world.subscribe(spouse, "wechat", TEMPLATE_DEDUCTION)
    settled = world.settle(child, [(owner, "copay", 1230), (spouse, "copay", 770)], notify=False)
    first, second = settled.delivery_ids
    real_mark_sent = delivery_module.Deliverer._mark_sent

    def flaky_mark_sent(self, claim, msgid):
        if claim.delivery_id == first:
            raise RuntimeError("database went away while recording the send")
        return real_mark_sent(self, claim, msgid)

    monkeypatch.setattr(delivery_module.Deliverer, "_mark_sent", flaky_mark_sent)
    notifier.deliverer.deliver_batch([first, second])

    # Both were claimed together; the second is still sent and recorded.
    assert len(sandbox.sent_messages(to=owner.openid)) == 1
    assert len(sandbox.sent_messages(to=spouse.openid)) == 1
    assert world.delivery(second).state == "sent"
    # The first went out but its outcome was not recorded: it stays claimed (never resent).
    assert world.delivery(first).state == "sending"


def test_a_row_whose_claim_raises_is_retried_later_with_backoff_and_given_up_after_its_window(
        world, notifier, sandbox, clock, monkeypatch):
    owner, spouse, child = world.person("张伟"), world.person("李娜"), world.person("张小明")
    world.subscribe(owner, "wechat", TEMPLATE_DEDUCTION)
    world.subscribe(spouse, "wechat", TEMPLATE_DEDUCTION)
    settled = world.settle(child, [(owner, "copay", 1230), (spouse, "copay", 770)], notify=False)
    poison_id, healthy_id = settled.delivery_ids
    real_take = consent_module.take_consent
    poisoned_user = owner.user_ids["wechat"]

    def take_consent(session, user_id, template_id):
        if user_id == poisoned_user:
            raise RuntimeError("a consent row the code cannot handle")
        return real_take(session, user_id, template_id)

    monkeypatch.setattr(consent_module, "take_consent", take_consent)
    notifier.drain()

    assert world.delivery(healthy_id).state == "sent"
    poison = world.delivery(poison_id)
    assert (poison.state, poison.last_error_code, poison.attempts) == ("pending", "claim_error", 1)
    assert poison.next_attempt_at > clock()  # backed off: the next sweeps leave it alone
    assert notifier.drain() == 0

    clock.advance(25 * 3600)  # past its 24-hour window: given up, no longer queued
    notifier.drain()
    poison = world.delivery(poison_id)
    assert (poison.state, poison.last_error_code) == ("failed", "claim_error")
    assert notifier.drain() == 0
    assert sandbox.sent_messages(to=owner.openid) == []
