"""gunicorn settings for the web service: ``gunicorn -c deploy/gunicorn.conf.py wsgi:app``.

Every value can be changed from the environment (the systemd unit and compose.yaml set them):

- ``BIND`` (default ``127.0.0.1:8000``; nginx in front) — or a ``unix:/run/copay/web.sock`` path;
- ``WEB_CONCURRENCY`` workers (default: one per core, at least 2) × ``GUNICORN_THREADS`` (default 4).
  One per core, not two: each worker's threads share one interpreter lock, so a worker uses at most
  one core, and more workers than cores only take turns on them — measured on two cores
  (docs/PERFORMANCE.md, session 6), 2 workers × 4 threads against 4 × 4 over 13 runs: p99 of a
  settlement 94–154 ms against 140–250, of a 亲情码 44–95 ms against 94–129, of ``GET /me`` 36–74 ms
  against 69–88, and 2.2–2.9 ms of server CPU per settlement against 2.7–3.9;
- ``GUNICORN_TIMEOUT`` (default 30 s: a settlement takes milliseconds; a platform call is bounded
  by ``PLATFORM_TIMEOUT_SECONDS``), ``GUNICORN_GRACEFUL_TIMEOUT`` (default 30 s);
- ``PROMETHEUS_MULTIPROC_DIR``: where each worker keeps its metric files (prometheus_client's
  multiprocess mode); default a fresh directory under /tmp. It is emptied when gunicorn starts, and
  a dead worker's live gauges are removed by ``child_exit``.

The access log is one JSON line per request on stdout. It has no path and no query string: voucher
codes and settlement numbers travel in paths, so the request is identified by its ``X-Request-Id``
and the app's own log line (route template, actor, error code) carries the rest.
"""

import json
import multiprocessing
import os
import tempfile
from pathlib import Path

bind = os.environ.get("BIND", "127.0.0.1:8000").split(",")
workers = int(os.environ.get("WEB_CONCURRENCY") or max(2, multiprocessing.cpu_count()))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
# Recycle workers now and then (a leak cannot grow forever); jitter keeps them from restarting together.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "20000"))
max_requests_jitter = max_requests // 10
# Heartbeat files on tmpfs: a worker on a slow disk is not killed as hung.
_SHM = "/dev/shm"  # noqa: S108 — gunicorn's own advice for its heartbeat files
worker_tmp_dir = _SHM if os.path.isdir(_SHM) else None
# Request-line and header limits well above what the API needs, below gunicorn's maximums.
limit_request_line = 4094
limit_request_fields = 100
# nginx sets X-Forwarded-*; the app (TRUSTED_PROXIES) decides which hops to believe, not gunicorn.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
proc_name = "copay-web"
# No control socket (gunicorn 25.1+ opens one at $XDG_RUNTIME_DIR or ~/.gunicorn/gunicorn.ctl): it is
# one more way to reload or stop the service, beside systemd's and compose's signals, and every
# gunicorn of the same user takes over that one path — the last one started unlinks the others'.
control_socket_disable = True

accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
access_log_format = json.dumps({
    "ts": "%(t)s", "logger": "gunicorn.access", "request_id": "%({x-request-id}o)s", "remote": "%(h)s",
    "method": "%(m)s", "status": "%(s)s", "bytes": "%(B)s", "duration_us": "%(D)s", "user_agent": "%(a)s",
})

_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="copay-prometheus-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir  # inherited by the workers before they import the app
raw_env = [f"PROMETHEUS_MULTIPROC_DIR={_metrics_dir}"]


def on_starting(server):
    """Start from empty metric files: the counters of a previous run's workers are not ours."""
    path = Path(_metrics_dir)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def child_exit(server, worker):
    """Drop the live gauges (DB pool use) of a worker that is gone; its counters stay counted."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
