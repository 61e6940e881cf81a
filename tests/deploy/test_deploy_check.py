"""``make deploy-check``: the web service and the notice worker started exactly as deploy/systemd's units
start them (their ExecStart lines, with /opt/copay replaced by this checkout), with gunicorn on
deploy/gunicorn.conf.py, on free ports, against a database this test creates on the machine's
PostgreSQL and the test Redis database — then one settlement through them, its notice pushed by the
worker, and /metrics adding up the gunicorn workers' counters (multiprocess mode)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from app.config import ROOT
from app.demo import OWNER
from app.security.pii import index_key_b64_from
from tests.conftest import TEMPLATE_DEDUCTION, TEST_KEYS, WECHAT_APPID, WECHAT_SECRET, _pem_private
from tests.helpers import scratch_database
from tests.money_helpers import HOSPITAL, NAMES, SECRETS, drug, sign_headers
from tests.ops_helpers import free_port, unit_command, unit_environment

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def deployment(postgres, redis_url, sandbox, alipay_app_key, tmp_path):
    if not postgres or not redis_url:
        pytest.skip("needs PostgreSQL (TEST_DATABASE_URL) and Redis (TEST_REDIS_URL), as production does")
    port = free_port()
    with scratch_database("copay_deploy") as database_url:
        env = {
            "PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8",
            "APP_ENV": "production", "DATABASE_URL": database_url.replace("+psycopg", ""), "REDIS_URL": redis_url,
            **TEST_KEYS, "PII_INDEX_KEY": index_key_b64_from(TEST_KEYS["PII_KEY"]),
            "DOCUMENT_DIR": str(tmp_path / "documents"), "REGION_CODE": "532600",
            "WECHAT_APPID": WECHAT_APPID, "WECHAT_SECRET": WECHAT_SECRET, "WECHAT_API_BASE_URL": sandbox.url + "/",
            "WECHAT_TEMPLATE_DEDUCTION": TEMPLATE_DEDUCTION, "WECHAT_MSG_TOKEN": "deploy-check-token",
            "WECHAT_AES_KEY": base64.b64encode(b"k" * 32).decode().rstrip("="),
            "ALIPAY_APPID": "2021000000000000", "ALIPAY_APP_PRIVATE_KEY": _pem_private(alipay_app_key),
            "ALIPAY_PUBLIC_KEY": sandbox.alipay_public_key_pem, "ALIPAY_GATEWAY_URL": sandbox.url + "/gateway.do",
            "TRUSTED_PROXIES": "1", "PLATFORM_TIMEOUT_SECONDS": "2",
        }
        web_env = {**env, **unit_environment("copay-web.service"), "BIND": f"127.0.0.1:{port}",
                   "WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "2",
                   "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus")}
        worker_env = {**env, **unit_environment("copay-notify.service")}
        migrate_env = {**env, **unit_environment("copay-migrate.service")}
        assert "lock_timeout" in migrate_env["PGOPTIONS"]
        migrated = subprocess.run(unit_command("copay-migrate.service"), env=migrate_env, cwd=ROOT,
                                  capture_output=True, text=True)
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        seeded = subprocess.run([str(ROOT / ".venv/bin/flask"), "--app", "wsgi", "seed-demo", "--scratch-database"],
                                env=env, cwd=ROOT, check=True, capture_output=True, text=True)
        assert "demo registry loaded" in seeded.stdout
        logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("web", "worker")}
        processes = {
            "web": subprocess.Popen(unit_command("copay-web.service"), env=web_env, cwd=ROOT, stdout=logs["web"],
                                    stderr=subprocess.STDOUT, start_new_session=True),
            "worker": subprocess.Popen(unit_command("copay-notify.service"), env=worker_env, cwd=ROOT,
                                       stdout=logs["worker"], stderr=subprocess.STDOUT, start_new_session=True),
        }
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    if requests.get(base + "/readyz", timeout=2).status_code == 200:
                        break
                except requests.RequestException:  # not listening yet, or the workers still booting
                    pass
                assert processes["web"].poll() is None, (tmp_path / "web.log").read_text()[-3000:]
                time.sleep(0.1)
            else:
                raise AssertionError("gunicorn did not become ready: " + (tmp_path / "web.log").read_text()[-3000:])
            yield base, database_url, processes, tmp_path
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)  # graceful, as systemd stops them
            for name, process in processes.items():
                try:
                    process.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)  # the group this test started
                    process.wait()
                logs[name].close()


def test_gunicorn_and_the_worker_as_deployed_settle_and_push_once(deployment, sandbox):
    base, database_url, processes, tmp_path = deployment
    openid = "o-deploy-check-owner"
    code = sandbox.issue_wechat_login_code(openid)
    signed_in = requests.post(base + "/api/v1/auth/wechat", json={"code": code}, timeout=10)
    assert signed_in.status_code == 200, signed_in.text
    auth = {"Authorization": f"Bearer {signed_in.json()['access_token']}"}
    sandbox.set_wechat_identity(openid, NAMES[OWNER], OWNER)  # R21: WeChat's real-name check proves who it is
    proof = {"wechat_realname_code": sandbox.issue_wechat_realname_code(openid)}
    verified = requests.post(base + "/api/v1/me/identity", json={"name": NAMES[OWNER], "id_number": OWNER,
                                                                 "proof": proof}, headers=auth, timeout=10)
    assert verified.status_code == 200, verified.text
    sandbox.grant_wechat_consent(openid, TEMPLATE_DEDUCTION)
    consent = requests.post(base + "/api/v1/subscriptions", headers=auth, timeout=10, json={
        "channel": "wechat", "mode": "one_time", "results": {TEMPLATE_DEDUCTION: "accept"}})
    assert consent.status_code in (200, 201), consent.text
    voucher = requests.post(base + "/api/v1/vouchers", json={}, headers=auth, timeout=10)
    assert voucher.status_code == 201, voucher.text

    path = "/api/v1/institution/settlements"
    body = json.dumps({"out_settlement_no": "DEPLOY-CHECK-1", "voucher_code": voucher.json()["code"],
                       "items": [drug(12_345)]}, ensure_ascii=False).encode()
    headers = {**sign_headers(HOSPITAL, SECRETS[HOSPITAL], "POST", path, body), "Content-Type": "application/json",
               "X-Forwarded-For": "198.51.100.7"}
    settled = requests.post(base + path, data=body, headers=headers, timeout=10)
    assert settled.status_code == 201, settled.text
    assert settled.json()["status"] == "settled"

    # The notice worker (RQ on Redis) pushes the deduction notice to the emulated WeChat.
    engine = create_engine(database_url)
    try:
        for _ in range(150):
            with engine.connect() as conn:
                states = [r[0] for r in conn.execute(text("SELECT state FROM deliveries"))]
            if states and all(s not in ("pending", "sending") for s in states):
                break
            time.sleep(0.1)
        assert states and set(states) == {"sent"}, (states, (tmp_path / "worker.log").read_text()[-3000:])
    finally:
        engine.dispose()

    # /metrics from 127.0.0.1 (no METRICS_TOKEN): the workers' counters, added up across processes.
    assert requests.get(base + "/metrics", headers={"X-Forwarded-For": "203.0.113.5"}, timeout=5).status_code == 403
    samples = {}
    for _ in range(4):  # whichever worker answers, the sum is the same
        scraped = requests.get(base + "/metrics", timeout=5)
        assert scraped.status_code == 200
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(scraped.text) for s in f.samples}
        assert samples[("copay_money_requests_total",
                        (("error_code", ""), ("kind", "settlement"), ("outcome", "settled")))] == 1
    assert samples[("copay_vouchers_issued_total", ())] == 1
    assert samples[("copay_copay_fen_total", ())] == settled.json()["copay_fen"]
    assert samples[("copay_metrics_state_up", (("source", "redis"),))] == 1
    # The JSON access log: one line per request, no paths.
    log_lines = [json.loads(line) for line in (tmp_path / "web.log").read_text().splitlines()
                 if line.startswith("{") and '"gunicorn.access"' in line]
    assert any(line["status"] == "201" and line["method"] == "POST" for line in log_lines)
    assert not any(voucher.json()["code"] in json.dumps(line) for line in log_lines)
    assert all(p.poll() is None for p in processes.values())
