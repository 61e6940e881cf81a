"""Prometheus metrics at ``/metrics`` (issue 14), on ``prometheus_client``.

Two kinds of figures:

- *events*, counted where they happen in each process: requests (route template, method, status,
  latency), settlements and refunds by outcome and error code, co-pay and refund amounts, vouchers
  issued, DB connections checked out. Under gunicorn every worker writes them to files in
  ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode; deploy/gunicorn.conf.py sets
  it up and marks dead workers) and a scrape of any worker adds them up;
- *state*, read at scrape time from the database and Redis: deliveries by channel and state, the
  age of the oldest delivery still open (pending or sending), the RQ queue depth. These are cached
  for ``STATE_CACHE_SECONDS`` so a scrape every few seconds costs the database one query per period.

Access (R17: this is operational data, not personal data, but it is not public either): with
``METRICS_TOKEN`` set, only ``Authorization: Bearer <METRICS_TOKEN>``; without it, only requests
whose client address is 127.0.0.1 or ::1 (behind ``TRUSTED_PROXIES`` that is the forwarded client
address, so a remote client going through the proxy is refused).
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from typing import Any

from flask import Flask, Response, current_app, g, request
from sqlalchemy import event, func, select


def _ensure_multiprocess_dir() -> None:
    """prometheus_client writes each process's metrics under PROMETHEUS_MULTIPROC_DIR from the moment a
    metric is created: make sure the directory is there (a CLI command may inherit the variable)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)


_ensure_multiprocess_dir()

from prometheus_client import (  # noqa: E402 — after the directory exists
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402

STATE_CACHE_SECONDS = 10.0
# Label values come from a closed set: a client choosing its own method name must not add series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LOCAL_ADDRESSES = frozenset({"127.0.0.1", "::1"})

REQUESTS = Counter("copay_http_requests_total", "HTTP requests by route template, method and status",
                   ["route", "method", "status"])
LATENCY = Histogram("copay_http_request_duration_seconds", "HTTP request latency by route template",
                    ["route", "method"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
MONEY = Counter("copay_money_requests_total",
                "Settlement and refund requests by outcome (settled|dry_run|replayed|refunded|rejected) and error code",
                ["kind", "outcome", "error_code"])
COPAY_FEN = Counter("copay_copay_fen_total", "Co-pay paid from family members' accounts, in fen (new settlements)")
OWN_ACCOUNT_FEN = Counter("copay_own_account_fen_total", "Paid from the beneficiary's own account, in fen")
REFUND_FEN = Counter("copay_refund_fen_total", "Refunded, in fen (new refunds)")
COPAY_AMOUNT = Histogram("copay_settlement_copay_fen", "Co-pay amount per settlement with a co-pay, in fen",
                         buckets=(100, 500, 1000, 5000, 10000, 50000, 100000, 500000))
VOUCHERS = Counter("copay_vouchers_issued_total", "E-vouchers issued")
POOL_CHECKED_OUT = Gauge("copay_db_pool_checked_out", "Database connections in use (all processes)",
                         multiprocess_mode="livesum")
READS = Counter("copay_record_reads_total", "Record reads by where they went (replica|primary) and why",
                ["target", "reason"])
POOL_CAPACITY = Gauge("copay_db_pool_capacity", "pool_size + max_overflow (all live processes)",
                      multiprocess_mode="livesum")

# Endpoint names whose responses are money outcomes, and the endpoint that issues vouchers.
_MONEY_ENDPOINTS = {"institution_settlements.create_settlement": "settlement",
                    "institution_settlements.refund": "refund"}
_VOUCHER_ENDPOINT = "vouchers.issue_voucher"


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class StateCollector:
    """Gauges read from the database and Redis at scrape time (cached briefly)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Any]] | None = None
        self.ttl = STATE_CACHE_SECONDS

    def collect(self) -> list[Any]:
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self.ttl:
                return self._cached[1]
            families = self._read()
            self._cached = (time.monotonic(), families)
            return families

    def _read(self) -> list[Any]:
        from models import Delivery

        deliveries = GaugeMetricFamily("copay_deliveries", "Notice deliveries by channel and state",
                                       labels=["channel", "state"])
        oldest = GaugeMetricFamily("copay_delivery_oldest_open_age_seconds",
                                   "Age of the oldest delivery still pending or sending (0: none)")
        queue = GaugeMetricFamily("copay_rq_queue_depth",
                                  "Notice work waiting in Redis: RQ jobs (notify), commit-time hand-overs (handover)",
                                  labels=["queue"])
        up = GaugeMetricFamily("copay_metrics_state_up", "1 when the database (and Redis) answered this scrape",
                               labels=["source"])
        engine = self.app.extensions["db.engine"]
        try:
            with engine.connect() as conn:
                for channel, state, count in conn.execute(
                    select(Delivery.channel, Delivery.state, func.count()).group_by(Delivery.channel, Delivery.state)
                ):
                    deliveries.add_metric([channel, state], count)
                first = conn.scalar(select(func.min(Delivery.created_at))
                                    .where(Delivery.state.in_(("pending", "sending"))))
            oldest.add_metric([], max(0.0, time.time() - first.timestamp()) if first else 0.0)
            up.add_metric(["database"], 1)
        except Exception:  # noqa: BLE001 — a scrape must answer even when the database does not
            up.add_metric(["database"], 0)
        redis = self.app.extensions.get("redis")
        if redis is not None:
            from notify.dispatch import HANDOVER_KEY, QUEUE_NAME

            try:
                from rq import Queue

                queue.add_metric([QUEUE_NAME], Queue(QUEUE_NAME, connection=redis).count)
                # The commit-time hand-overs (one per settlement or refund) not yet taken by a worker.
                queue.add_metric(["handover"], redis.llen(HANDOVER_KEY))
                up.add_metric(["redis"], 1)
            except Exception:  # noqa: BLE001
                up.add_metric(["redis"], 0)
        families = [deliveries, oldest, queue, up]
        router = self.app.extensions.get("db.replica")
        if router is not None:
            lag = GaugeMetricFamily("copay_replica_lag_seconds",
                                    "Replica lag from the primary's side as last measured by this process "
                                    "(-1: not measured, down or not a replica; +Inf: behind by an unknown amount)")
            lag.add_metric([], router.lag if router.lag is not None and router.state != "down" else -1.0)
            families.append(lag)
        return families


# Label children by their label values, looked up once per process: ``labels()`` takes a lock and
# builds its key on every call. The keys come from closed sets (route templates, METHODS, statuses,
# error codes), so these stay small; the bound is a guard, past it ``labels()`` is simply called.
_MAX_CHILDREN = 4096
_request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
_money_children: dict[tuple[str, str, str], Any] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    method = method if method in METHODS else "OTHER"
    key = (route, method, status)
    children = _request_children.get(key)
    if children is None:
        children = (REQUESTS.labels(route, method, str(status)), LATENCY.labels(route, method))
        if len(_request_children) < _MAX_CHILDREN:
            _request_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


def _count_money(kind: str, outcome: str, error_code: str) -> None:
    key = (kind, outcome, error_code)
    child = _money_children.get(key)
    if child is None:
        child = MONEY.labels(kind, outcome, error_code)
        if len(_money_children) < _MAX_CHILDREN:
            _money_children[key] = child
    child.inc()


def observe_money(kind: str, status: int, error_code: str | None, outcome: Any) -> None:
    """Count one settlement or refund request; amounts only for new money movements."""
    if error_code is not None or status >= 400 or outcome is None:
        _count_money(kind, "rejected", error_code or f"HTTP_{status}")
        return
    if getattr(outcome, "replayed", False):
        _count_money(kind, "replayed", "")
        return
    body = outcome.body
    if kind == "settlement":
        if body.get("status") == "dry_run":
            _count_money(kind, "dry_run", "")
            return
        _count_money(kind, "settled", "")
        copay = int(body.get("copay_fen") or 0)
        COPAY_FEN.inc(copay)
        OWN_ACCOUNT_FEN.inc(int(body.get("own_account_fen") or 0))
        if copay:
            COPAY_AMOUNT.observe(copay)
    else:
        _count_money(kind, "refunded", "")
        REFUND_FEN.inc(int(body.get("amount_fen") or 0))


def _allowed() -> bool:
    token = current_app.config.get("METRICS_TOKEN") or ""
    if token:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
    return (request.remote_addr or "") in LOCAL_ADDRESSES


def render(app: Flask) -> bytes:
    directory = multiprocess_dir()
    if directory:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        events = generate_latest(registry)
    else:
        events = generate_latest(REGISTRY)
    state_registry = CollectorRegistry(auto_describe=False)
    state_registry.register(app.extensions["metrics.state"])
    return events + generate_latest(state_registry)


def _track_pool(app: Flask) -> None:
    engine = app.extensions["db.engine"]
    pool = engine.pool
    capacity = (getattr(pool, "size", lambda: 0)() or 0) + max(0, getattr(pool, "_max_overflow", 0) or 0)
    POOL_CAPACITY.inc(capacity)

    @event.listens_for(engine, "checkout")
    def _checkout(*_args: Any) -> None:
        POOL_CHECKED_OUT.inc()

    @event.listens_for(engine, "checkin")
    def _checkin(*_args: Any) -> None:
        POOL_CHECKED_OUT.dec()


def init_app(app: Flask) -> None:
    """Register the request hooks and ``/metrics`` (call after the blueprints and the database)."""
    app.extensions["metrics.state"] = StateCollector(app)
    _track_pool(app)

    @app.before_request
    def _metrics_start() -> None:
        # Per request, even where an app context outlives it (tests, CLI): no stale outcome or code.
        state = g._get_current_object()
        state.pop("money_outcome", None)
        state.pop("error_code", None)

    @app.after_request
    def _metrics_observe(response: Response) -> Response:
        state = g._get_current_object()  # the request's g itself, not one proxy look-up per field
        started = state.get("request_started")  # set by the request log's hook (app/logs.py), registered first
        if started is None:
            return response
        rule = request.url_rule
        route = rule.rule if rule is not None else "<unmatched>"
        if route == "/metrics":
            return response
        status = response.status_code
        observe_request(route, request.method, status, time.perf_counter() - started)
        endpoint = rule.endpoint if rule is not None else ""
        kind = _MONEY_ENDPOINTS.get(endpoint)
        if kind is not None:
            observe_money(kind, status, state.get("error_code"), state.get("money_outcome"))
        elif endpoint == _VOUCHER_ENDPOINT and status < 300:
            VOUCHERS.inc()
        return response

    def metrics() -> Response:
        if not _allowed():
            from app.errors_http import envelope

            return envelope("FORBIDDEN", "Metrics are not public.", 403)
        return Response(render(app), content_type=CONTENT_TYPE_LATEST)  # it names its charset already

    app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])
