"""Hand committed deliveries to whoever sends them: RQ on Redis, or a thread pool in-process.

The money transaction commits first; only then does the service call
``domain().notifier.committed(delivery_ids)`` (STYLE §10). That call never fails the request:
if the hand-over is lost (Redis down, process killed) the rows stay ``pending`` in the database
and the sweeper — in ``notify-worker`` with Redis, in-process without — picks them up.

* ``RqNotifier`` (``REDIS_URL`` set): the hand-over is one ``RPUSH`` of a money movement's 1–4
  delivery ids (``"812,813"``) onto the ``HANDOVER_KEY`` list — one Redis command, about a tenth of
  the CPU of an RQ enqueue (a Job object, a pickle and a pipeline of several commands), paid by
  the web worker of every settlement and refund. ``notify-worker`` pops the list a few entries at a
  time (``take_handed_over``) into its send threads, which claim those deliveries in one transaction
  each. The sweeper queues due rows as RQ jobs on the ``notify`` queue, in batches: retries when
  their time comes, never-tried rows once they have waited ``HANDOVER_GRACE_SECONDS`` (their
  hand-over was lost — Redis down, the web process died between commit and ``RPUSH``, or a worker
  died with popped entries in hand). A row handed over or queued twice is harmless: only one claim
  wins.
* ``InProcessNotifier`` (no Redis, SPEC §7): the same deliverer on a small thread pool, plus a
  sweeper thread for retries and for rows left over from before a restart. With ``TESTING`` it
  starts no threads: tests call ``drain()``, which sends whatever is due, synchronously.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Protocol

from flask import Flask

from notify.delivery import CLAIM_CHUNK, Deliverer, due_deliveries, expire_leases

log = logging.getLogger(__name__)

QUEUE_NAME = "notify"
# The commit-time hand-over: a Redis list of comma-separated delivery ids, one entry per movement.
HANDOVER_KEY = "copay:notify:handover"
# Entries a worker pops at once (one send-thread task): at most a few claim transactions of work,
# so that a burst is shared among the workers instead of taken by the first one to ask.
HANDOVER_TAKE = CLAIM_CHUNK
SWEEP_INTERVAL_SECONDS = 2.0
SWEEP_BATCH = 500
IN_PROCESS_THREADS = 4
IN_PROCESS_BATCH = 10  # deliveries per pool task (sent one after the other)
JOB_BATCH = 25  # deliveries per sweeper job
SEND_THREADS = 8  # jobs delivered at once by one notify-worker
# A never-tried row younger than this still has its commit-time job queued: the sweeper leaves it.
HANDOVER_GRACE_SECONDS = 15.0
# The sweeper queues a row again only if it is still due this long after it last queued it
# (a long backlog must not fill the queue with copies).
REQUEUE_AFTER_SECONDS = 120.0
JOB_TIMEOUT_SECONDS = 900
# After a failed enqueue, leave new deliveries to the sweeper for a while instead of making every
# settlement wait for Redis' connect timeout.
ENQUEUE_BACKOFF_SECONDS = 5.0
FAILED_JOB_TTL_SECONDS = 24 * 3600


class Notifier(Protocol):
    def committed(self, delivery_ids: Sequence[int]) -> None:
        """Called after the money transaction committed, with the deliveries it wrote."""

    def drain(self) -> int:
        """Send everything due now, in this thread; return how many deliveries were attempted."""


def build_deliverer(app: Flask) -> Deliverer:
    """The deliverer over this app's database, platform gateways and templates."""
    from notify.channels.alipay import AlipayChannel
    from notify.channels.wechat import WeChatChannel

    cfg = app.config
    domain = app.extensions["domain"]
    channels: dict[str, Any] = {}
    if cfg.get("WECHAT_APPID") and domain.wechat is not None:
        channels["wechat"] = WeChatChannel(domain.wechat, {
            # One account-change template reports deductions and refund credits alike.
            "deduction": cfg.get("WECHAT_TEMPLATE_DEDUCTION"), "refund": cfg.get("WECHAT_TEMPLATE_DEDUCTION"),
            "receipt": cfg.get("WECHAT_TEMPLATE_RECEIPT"),
            # R21: binding and identity notices go out with the receipt template (notify.person_notices).
            "binding": cfg.get("WECHAT_TEMPLATE_RECEIPT"), "identity": cfg.get("WECHAT_TEMPLATE_RECEIPT"),
        })
    if domain.alipay is not None:
        channels["alipay"] = AlipayChannel(domain.alipay, {
            "deduction": cfg.get("ALIPAY_TEMPLATE_DEDUCTION"), "refund": cfg.get("ALIPAY_TEMPLATE_DEDUCTION"),
            "receipt": cfg.get("ALIPAY_TEMPLATE_RECEIPT"),
            "binding": cfg.get("ALIPAY_TEMPLATE_RECEIPT"), "identity": cfg.get("ALIPAY_TEMPLATE_RECEIPT"),
        })
    # The lease must outlast the slowest attempt: a token fetch, a send, a forced refresh and a
    # resend, each bounded by the platform timeout.
    lease = max(60.0, 6 * float(cfg.get("PLATFORM_TIMEOUT_SECONDS", 5.0)))
    return Deliverer(app.extensions["db.sessionmaker"], channels,
                     retry_base_seconds=float(cfg.get("NOTIFY_RETRY_BASE_SECONDS", 30)), lease_seconds=lease)


class _Dispatcher:
    """What both notifiers share: the deliverer (built on first use) and the sweep."""

    def __init__(self, app: Flask):
        self.app = app
        self._deliverer: Deliverer | None = None
        self._lock = threading.Lock()

    @property
    def deliverer(self) -> Deliverer:
        # Built lazily: the notifier is made before the platform gateways it sends through.
        if self._deliverer is None:
            with self._lock:
                if self._deliverer is None:
                    self._deliverer = build_deliverer(self.app)
        return self._deliverer

    def sweep(self, limit: int | None = None, grace_seconds: float = 0.0) -> list[tuple[int, int]]:
        """Expire dead leases, then list (id, attempts) of what is due (never-tried rows only after
        ``grace_seconds``)."""
        sessions = self.deliverer.sessions
        now = self.deliverer.clock()
        with sessions() as session:
            expired = expire_leases(session, now)
            if expired:
                log.warning("%d deliveries were left mid-send by a stopped worker: outcome unknown", expired)
            return due_deliveries(session, now, limit or SWEEP_BATCH,
                                  fresh_before=now - timedelta(seconds=grace_seconds))

    def drain(self, max_rounds: int = 1000) -> int:
        """Send everything due now, in this thread (``notify-worker --burst`` without Redis, tests)."""
        attempted = 0
        for _ in range(max_rounds):
            due = [delivery_id for delivery_id, _attempts in self.sweep()]
            outcomes = self.deliverer.deliver_many(due)
            attempted += len(due)
            # Stop when nothing was due or nothing could be claimed (retries are scheduled later).
            if not due or all(o.state == "skipped" for o in outcomes):
                break
        return attempted


class RqNotifier(_Dispatcher):
    """Hands delivery ids to ``notify-worker`` over Redis: a list at commit time, RQ jobs from the sweeper."""

    def __init__(self, app: Flask):
        super().__init__(app)
        self._queue: Any = None
        self._paused_until = 0.0
        # The sweeper's memory of what it queued: (id, attempts) → when. A retry has more attempts.
        self._queued_at: dict[tuple[int, int], float] = {}
        self.jobs_done = 0  # RQ jobs and hand-over batches run by this process's worker
        self.send_pool: ThreadPoolExecutor | None = None  # the worker's send threads (notify-worker)
        self.send_slots = threading.BoundedSemaphore(2 * SEND_THREADS)

    @property
    def redis(self) -> Any:
        return self.app.extensions["redis"]

    def queue(self) -> Any:
        """The sweeper's RQ queue (built once)."""
        if self._queue is None:
            from rq import Queue

            self._queue = Queue(QUEUE_NAME, connection=self.redis)
        return self._queue

    def hand_over(self, delivery_ids: Sequence[int]) -> int:
        """Append these deliveries to the hand-over list: one ``RPUSH``; raises on Redis errors."""
        if not delivery_ids:
            return 0
        self.redis.rpush(HANDOVER_KEY, ",".join(str(int(i)) for i in delivery_ids))
        return len(delivery_ids)

    def take_handed_over(self, entries: int = HANDOVER_TAKE, wait_seconds: float = 0.0) -> list[int]:
        """The worker's side: pop up to ``entries`` hand-overs, oldest first, waiting up to
        ``wait_seconds`` when the list is empty; their delivery ids. Raises on Redis errors."""
        raw = self.redis.lpop(HANDOVER_KEY, entries)  # LPOP with a count: Redis ≥ 6.2
        if not raw and wait_seconds > 0:
            popped = self.redis.blpop([HANDOVER_KEY], timeout=wait_seconds)
            raw = [popped[1]] if popped else []
        return [int(i) for entry in raw or () for i in entry.split(b",") if i]

    def handed_over_count(self) -> int:
        """Hand-overs waiting for a worker."""
        return int(self.redis.llen(HANDOVER_KEY))

    def enqueue(self, delivery_ids: Sequence[int]) -> int:
        """Queue one RQ job for these deliveries (the sweeper's batches); raises on Redis errors."""
        if not delivery_ids:
            return 0
        self.queue().enqueue_call("notify.worker.deliver_job", args=(list(delivery_ids),), result_ttl=0,
                                  failure_ttl=FAILED_JOB_TTL_SECONDS, timeout=JOB_TIMEOUT_SECONDS)
        return len(delivery_ids)

    def committed(self, delivery_ids: Sequence[int]) -> None:
        if not delivery_ids or time.monotonic() < self._paused_until:
            return
        try:
            self.hand_over(delivery_ids)
        except Exception as exc:  # noqa: BLE001 — Redis errors must never fail the settlement
            self._paused_until = time.monotonic() + ENQUEUE_BACKOFF_SECONDS
            log.warning("could not queue %d deliveries (%s); the sweeper will send them",
                        len(delivery_ids), type(exc).__name__)

    def send_pool_drained(self) -> None:
        """Wait until the worker's send threads have finished every job handed to them."""
        for _ in range(2 * SEND_THREADS):
            self.send_slots.acquire()
        for _ in range(2 * SEND_THREADS):
            self.send_slots.release()

    def sweep_and_enqueue(self, grace_seconds: float = HANDOVER_GRACE_SECONDS) -> int:
        """One sweeper round: queue the due deliveries not queued lately; returns how many."""
        now = time.monotonic()
        self._queued_at = {i: t for i, t in self._queued_at.items() if now - t < REQUEUE_AFTER_SECONDS}
        due = [key for key in self.sweep(grace_seconds=grace_seconds) if key not in self._queued_at]
        for start in range(0, len(due), JOB_BATCH):
            batch = due[start:start + JOB_BATCH]
            self.enqueue([delivery_id for delivery_id, _attempts in batch])
            self._queued_at.update(dict.fromkeys(batch, now))
        return len(due)


class InProcessNotifier(_Dispatcher):
    """Delivers on a small thread pool in this process; a sweeper thread handles retries."""

    def __init__(self, app: Flask, background: bool):
        super().__init__(app)
        self.background = background
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: set[int] = set()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    def start(self) -> None:
        """Start the pool and the sweeper (once; after a fork, in the child)."""
        if not self.background or self._pool is not None:
            return
        with self._lock:
            if self._pool is None:
                self._stop.clear()
                self._pool = ThreadPoolExecutor(IN_PROCESS_THREADS, thread_name_prefix="notify")
                self._sweeper = threading.Thread(target=self._sweep_forever, name="notify-sweeper", daemon=True)
                self._sweeper.start()

    def stop(self) -> None:
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._sweeper is not None:
            self._sweeper.join(timeout=SWEEP_INTERVAL_SECONDS + 5)
            self._sweeper = None

    def committed(self, delivery_ids: Sequence[int]) -> None:
        if self.background and delivery_ids:
            self.start()
            self._submit(delivery_ids)

    def _submit(self, delivery_ids: Sequence[int]) -> None:
        with self._lock:
            fresh = [i for i in delivery_ids if i not in self._in_flight]
            self._in_flight.update(fresh)
            pool = self._pool
        if fresh and pool is not None:
            pool.submit(self._run, fresh)

    def _run(self, delivery_ids: list[int]) -> None:
        try:
            self.deliverer.deliver_batch(delivery_ids)
        except Exception:  # noqa: BLE001 — the rows wait for the sweeper
            log.exception("deliveries %s: unexpected failure", delivery_ids)
        finally:
            with self._lock:
                self._in_flight.difference_update(delivery_ids)

    def _sweep_forever(self) -> None:
        while not self._stop.wait(SWEEP_INTERVAL_SECONDS):
            try:
                due = [delivery_id for delivery_id, _attempts in self.sweep()]
            except Exception:  # noqa: BLE001 — e.g. the database is restarting; try again next round
                log.exception("notify sweeper round failed")
                continue
            for start in range(0, len(due), IN_PROCESS_BATCH):
                self._submit(due[start:start + IN_PROCESS_BATCH])


def build_notifier(app: Flask) -> Notifier:
    if app.config.get("REDIS_URL"):
        return RqNotifier(app)
    notifier = InProcessNotifier(app, background=not app.config.get("TESTING"))
    if notifier.background:
        # Rows left pending by an earlier process are swept once this one serves its first request.
        app.before_request(notifier.start)
    return notifier
