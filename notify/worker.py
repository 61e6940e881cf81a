"""``flask --app wsgi notify-worker [--burst]``: deliver queued notices (SPEC §7).

With Redis: a hand-over thread that pops the commit-time hand-over list (``HANDOVER_KEY``: the
delivery ids each settlement or refund pushed after its commit) a few entries at a time into the
send threads; an RQ ``SimpleWorker`` on the ``notify`` queue for the sweeper's jobs (run in this
process, inside this app: no fork and no app start-up per job); and a sweeper thread that every
few seconds gives up dead leases and queues every due delivery — retries whose time has come, and
rows whose hand-over was lost because Redis was down or a process died. Without Redis the same
sweep delivers directly. ``--burst`` drains what is due now and exits.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click
from flask import Flask, current_app

from notify.dispatch import HANDOVER_TAKE, SEND_THREADS, SWEEP_INTERVAL_SECONDS, RqNotifier

log = logging.getLogger(__name__)

# How long one pop of the hand-over list waits for an entry (below the Redis client's 2 s socket
# timeout); also how long a stopping worker may wait for its hand-over thread.
HANDOVER_WAIT_SECONDS = 1.0


def deliver_job(delivery_ids: list[int]) -> None:
    """The RQ job: send these deliveries (idempotent: a job run twice sends each once).

    In ``notify-worker`` the job hands its deliveries to the worker's send threads and returns, so
    that RQ's own per-job bookkeeping (some thirty Redis round trips) is not paid in series with
    the database and the platform; at most ``2 × SEND_THREADS`` jobs are in hand at once. The
    database, not the job, is the record: rows of a job lost with its process are found again by
    the sweeper (still pending) or given up as outcome unknown (claimed).
    """
    notifier = current_app.extensions["domain"].notifier
    notifier.jobs_done += 1
    if notifier.send_pool is None:
        notifier.deliverer.deliver_batch(delivery_ids)
        return
    notifier.send_slots.acquire()
    _submit(notifier, delivery_ids)


def _submit(notifier: RqNotifier, delivery_ids: list[int]) -> None:
    """Send these on the worker's send threads; the caller holds a send slot, released when done."""

    def run() -> None:
        try:
            notifier.deliverer.deliver_batch(delivery_ids)
        except Exception:  # noqa: BLE001 — the rows stay in the database for the sweeper
            log.exception("deliveries %s: unexpected failure", delivery_ids)
        finally:
            notifier.send_slots.release()

    try:
        notifier.send_pool.submit(run)
    except BaseException:
        notifier.send_slots.release()
        raise


def take_handovers(notifier: RqNotifier, wait_seconds: float, stop: threading.Event | None = None) -> int:
    """Pop up to ``HANDOVER_TAKE`` hand-overs into one send-thread task; the number of ids (0: none).

    A send slot is taken *before* popping, so a worker whose send threads are all busy leaves the
    list to the other workers. Popped entries live only in this process from then on: if it dies
    before claiming them, their rows are still ``pending`` and the sweeper queues them after
    ``HANDOVER_GRACE_SECONDS``.
    """
    notifier.send_slots.acquire()
    try:
        ids = [] if stop is not None and stop.is_set() else notifier.take_handed_over(HANDOVER_TAKE, wait_seconds)
    except BaseException:
        notifier.send_slots.release()
        raise
    if not ids:
        notifier.send_slots.release()
        return 0
    notifier.jobs_done += 1
    _submit(notifier, ids)
    return len(ids)


def _take_handovers_forever(notifier: RqNotifier, stop: threading.Event, interval: float) -> None:
    while not stop.is_set():
        try:
            take_handovers(notifier, HANDOVER_WAIT_SECONDS, stop)
        except Exception as exc:  # noqa: BLE001 — Redis is away; the rows wait in the database
            log.warning("notice hand-over list unreadable: %s", type(exc).__name__)
            stop.wait(interval)


def _sweep_forever(notifier: RqNotifier, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        try:
            notifier.sweep_and_enqueue()
        except Exception as exc:  # noqa: BLE001 — Redis or the database is away; rows wait in the database
            log.warning("notify sweeper round failed: %s", type(exc).__name__)


def run_worker(app: Flask, *, burst: bool, interval: float = SWEEP_INTERVAL_SECONDS) -> int:
    """Run the worker until stopped (or, with ``burst``, until nothing is due); returns a count."""
    notifier = app.extensions["domain"].notifier
    if not isinstance(notifier, RqNotifier):
        if burst:
            return notifier.drain()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        attempted = 0
        while not stop.is_set():
            attempted += notifier.drain()
            stop.wait(interval)
        return attempted

    from rq import SimpleWorker

    queue = notifier.queue()
    worker = SimpleWorker([queue], connection=queue.connection)
    notifier.send_pool = ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="notify-send")
    notifier.send_slots = threading.BoundedSemaphore(2 * SEND_THREADS)
    try:
        return _work(notifier, worker, burst, interval)
    finally:
        notifier.send_pool.shutdown(wait=True)  # a stopping worker finishes what it has in hand
        notifier.send_pool = None


def _work(notifier: RqNotifier, worker: Any, burst: bool, interval: float) -> int:
    if burst:
        # A sweep queues at most SWEEP_BATCH rows: sweep and work until a sweep finds nothing new.
        while True:
            while take_handovers(notifier, wait_seconds=0):
                pass
            worker.work(burst=True, logging_level="WARNING", with_scheduler=False)
            notifier.send_pool_drained()
            if not notifier.sweep_and_enqueue(grace_seconds=0):
                return notifier.jobs_done
    stop = threading.Event()
    sweeper = threading.Thread(target=_sweep_forever, args=(notifier, stop, interval), name="notify-sweeper",
                               daemon=True)
    handovers = threading.Thread(target=_take_handovers_forever, args=(notifier, stop, interval),
                                 name="notify-handover", daemon=True)
    sweeper.start()
    handovers.start()
    try:
        notifier.sweep_and_enqueue()
    except Exception as exc:  # noqa: BLE001 — the sweeper thread keeps trying
        log.warning("first sweep failed: %s", type(exc).__name__)
    try:
        worker.work(logging_level="WARNING", with_scheduler=False)
    finally:
        stop.set()
        # It pops nothing more once stopped; what it popped is submitted before the pool shuts down.
        handovers.join()
    return notifier.jobs_done


@click.command("notify-worker")
@click.option("--burst", is_flag=True, help="Deliver what is due now, then exit.")
def notify_worker_command(burst: bool) -> None:
    """Deliver deduction notices: RQ worker + sweeper with Redis, the sweep alone without."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    mode = "rq" if isinstance(app.extensions["domain"].notifier, RqNotifier) else "in-process"
    click.echo(f"notify-worker ({mode}{', burst' if burst else ''}) started", err=True)
    count = run_worker(app, burst=burst)
    unit = "deliveries attempted" if mode == "in-process" else "jobs and hand-over batches run"
    click.echo(f"notify-worker stopped ({count} {unit})", err=True)
