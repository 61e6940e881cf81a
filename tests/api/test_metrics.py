"""/metrics (issue 14): counters move with what happens; only the token or localhost may read them."""

from __future__ import annotations

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import bearer
from tests.money_helpers import CHILD, OWNER, fresh, issue, make_binding, person_id, refund, settle, sign_in


def scrape(client, **kwargs) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST  # once, as prometheus_client writes it
    found = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def family(app, demo, client, sandbox):
    fresh(app)
    make_binding(app, OWNER, CHILD, "child")
    return sign_in(client, sandbox, OWNER)


def test_counters_move_after_a_settlement_a_replay_a_rejection_and_a_refund(app, client, family):
    route = "/api/v1/institution/settlements"
    app.extensions["metrics.state"].ttl = 0  # read the database at every scrape
    before = scrape(client)
    code = issue(client, family, person_id(app, CHILD))
    first = settle(client, code, out_no="OUT-METRICS-1")
    assert first.status_code == 201, first.get_json()
    copay = first.get_json()["copay_fen"]
    assert copay > 0
    assert settle(client, code, out_no="OUT-METRICS-1").status_code == 201  # replay (R13)
    rejected = settle(client, code, out_no="OUT-METRICS-2")  # the voucher is used
    assert rejected.status_code >= 400
    error_code = rejected.get_json()["error"]["code"]
    back = refund(client, first.get_json()["settlement_no"], 1000)
    assert back.status_code == 201, back.get_json()
    after = scrape(client)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("copay_vouchers_issued_total") == 1
    assert moved("copay_money_requests_total", kind="settlement", outcome="settled", error_code="") == 1
    assert moved("copay_money_requests_total", kind="settlement", outcome="replayed", error_code="") == 1
    assert moved("copay_money_requests_total", kind="settlement", outcome="rejected", error_code=error_code) == 1
    assert moved("copay_money_requests_total", kind="refund", outcome="refunded", error_code="") == 1
    assert moved("copay_copay_fen_total") == copay  # the replay moved no money and is not counted twice
    assert moved("copay_refund_fen_total") == 1000
    assert moved("copay_settlement_copay_fen_count") == 1
    assert moved("copay_http_requests_total", route=route, method="POST", status="201") == 2
    assert moved("copay_http_request_duration_seconds_count", route=route, method="POST") == 3
    # State read at scrape time: the settlement's notice deliveries and the oldest open one.
    assert sum(v for (name, _labels), v in after.items() if name == "copay_deliveries") >= 1
    assert ("copay_delivery_oldest_open_age_seconds", ()) in after
    assert value(after, "copay_metrics_state_up", source="database") == 1
    assert ("copay_db_pool_checked_out", ()) in after
    if app.extensions.get("redis") is not None:
        assert value(after, "copay_metrics_state_up", source="redis") == 1
        assert ("copay_rq_queue_depth", (("queue", "notify"),)) in after
        assert ("copay_rq_queue_depth", (("queue", "handover"),)) in after


def test_concrete_paths_never_become_labels(app, client):
    client.get("/api/v1/bindings/1234567890123456789")
    client.get("/no/such/path/532621198001011234")
    body = client.get("/metrics").get_data(as_text=True)
    assert "1234567890123456789" not in body and "532621198001011234" not in body
    assert 'route="/api/v1/bindings/<int:binding_id>"' in body
    assert 'route="<unmatched>"' in body


def test_a_client_cannot_create_label_values(client):
    for method in ("FOOBAR", "X" * 40, "PROPFIND"):
        client.open("/no/such/path", method=method)
    body = client.get("/metrics").get_data(as_text=True)
    assert "FOOBAR" not in body and "PROPFIND" not in body and "X" * 40 not in body
    assert 'method="OTHER"' in body


def test_without_a_token_only_localhost(client):
    assert client.get("/metrics").status_code == 200
    remote = client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert remote.status_code == 403
    assert remote.get_json()["error"]["code"] == "FORBIDDEN"


def test_with_a_token_only_the_token(make_app):
    app = make_app(METRICS_TOKEN="m-token-0123456789abcdef")
    client = app.test_client()
    assert client.get("/metrics").status_code == 403  # localhost is not enough any more
    assert client.get("/metrics", headers=bearer("wrong")).status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Basic m-token-0123456789abcdef"}).status_code == 403
    ok = client.get("/metrics", headers=bearer("m-token-0123456789abcdef"),
                    environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert ok.status_code == 200 and b"copay_http_requests_total" in ok.data


def test_behind_the_proxy_a_remote_client_is_not_localhost(make_app):
    app = make_app(TRUSTED_PROXIES=1)
    client = app.test_client()
    # nginx on the same host connects from 127.0.0.1 and appends the real client address.
    assert client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403
    spoofed = client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1, 203.0.113.9"})
    assert spoofed.status_code == 403
    assert client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 200
