"""Settlement by social-security card (R12): same rules as a voucher, CARD_INVALID without a hint,
failed look-ups limited per institution, and records that say how each settlement was authorised."""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import select

from app.extensions import app_session
from app.i18n import message_for
from models import Settlement
from tests.helpers import bearer
from tests.money_helpers import (
    CHILD,
    HOSPITAL,
    OWNER,
    PHARMACY,
    SPOUSE,
    balance,
    drug,
    fresh,
    issue,
    make_binding,
    person_id,
    refund,
    settle,
    sign_in,
    signed,
)

CARDS = {OWNER: "M53262100000001", SPOUSE: "M53262100000002", CHILD: "M53262100000003"}
URL = "/api/v1/institution/settlements"


def settle_by_card(client, card_no, id_number, items=None, *, inst=HOSPITAL, out_no=None, **fields):
    body = {"out_settlement_no": out_no or "OUT" + secrets.token_hex(6),
            "card": {"social_card_no": card_no, "id_number": id_number}, "items": items or [drug(10_000)], **fields}
    return signed(client, inst, None, "POST", URL, body)


# verify-ledger must be clean after every test that moves money (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("ledger_stays_clean")


@pytest.fixture
def family(app, demo):
    fresh(app)
    make_binding(app, OWNER, CHILD, "child")
    make_binding(app, SPOUSE, CHILD, "child")


def test_a_childs_card_is_paid_like_a_voucher_from_the_bound_parents(app, client, family):
    response = settle_by_card(client, CARDS[CHILD], CHILD, [drug(30_000)])
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert (body["copay_fen"], body["cash_fen"], body["auth_method"]) == (30_000, 0, "card")
    assert body["beneficiary"]["name"] == "**明"
    assert balance(app, OWNER) == 350_000 - 30_000
    with app_session() as session, session.begin():
        row = session.execute(select(Settlement.auth_method, Settlement.voucher_id)).one()
    assert tuple(row) == ("card", None)


def test_the_owners_card_pays_from_their_own_account(app, client, family):
    body = settle_by_card(client, CARDS[OWNER], OWNER, [drug(12_300)]).get_json()
    assert (body["own_account_fen"], body["copay_fen"]) == (12_300, 0)


@pytest.mark.parametrize("case", ["card_no", "id_number", "other_persons_card", "malformed_id", "inactive"])
def test_a_card_that_matches_no_active_person_is_card_invalid_without_a_hint(app, client, demo, case):
    from app.demo import RETIRED_INACTIVE

    fresh(app)
    card, number = {
        "card_no": ("M53262100009999", OWNER),
        "id_number": (CARDS[OWNER], SPOUSE),
        "other_persons_card": (CARDS[SPOUSE], OWNER),
        "malformed_id": (CARDS[OWNER], "123"),
        "inactive": ("M53262200000007", RETIRED_INACTIVE),
    }[case]
    response = settle_by_card(client, card, number)
    assert response.status_code == 422
    err = response.get_json()["error"]
    assert err["code"] == "CARD_INVALID" and err["details"] == {}
    assert err["message"] == message_for("CARD_INVALID", "zh")  # the code's own text, no hint of the field
    assert balance(app, OWNER) == 350_000


def test_the_card_number_is_compared_without_case_or_space_differences(app, client, family):
    assert settle_by_card(client, " m53262100000001 ", OWNER).status_code == 201


@pytest.mark.parametrize("body", [
    {"voucher_code": "424" + "0" * 25, "card": {"social_card_no": "M1", "id_number": "X"}},
    {},
])
def test_exactly_one_of_voucher_code_and_card(app, client, demo, body):
    fresh(app)
    full = {"out_settlement_no": "OUT1", "items": [drug(100)], **body}
    response = signed(client, HOSPITAL, None, "POST", URL, full)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "VALIDATION_ERROR"


def test_a_card_replay_returns_the_original_and_another_body_is_a_conflict(app, client, family):
    first = settle_by_card(client, CARDS[CHILD], CHILD, [drug(5_000)], out_no="CARD-1")
    again = settle_by_card(client, CARDS[CHILD], CHILD, [drug(5_000)], out_no="CARD-1")
    assert again.status_code == 201 and again.get_json() == first.get_json()
    other = settle_by_card(client, CARDS[CHILD], CHILD, [drug(6_000)], out_no="CARD-1")
    assert other.status_code == 409 and other.get_json()["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    assert balance(app, OWNER) == 350_000 - 5_000


def test_a_card_settlement_refunds_and_dry_runs_like_any_other(app, client, family):
    dry = settle_by_card(client, CARDS[CHILD], CHILD, [drug(5_000)], dry_run=True)
    assert dry.status_code == 200 and dry.get_json()["status"] == "dry_run"
    assert balance(app, OWNER) == 350_000
    settled = settle_by_card(client, CARDS[CHILD], CHILD, [drug(5_000)]).get_json()
    assert refund(client, settled["settlement_no"], 5_000).status_code == 201
    assert balance(app, OWNER) == 350_000


def test_failed_card_look_ups_are_limited_per_institution(make_app, sandbox, demo):
    app = make_app(CARD_LOOKUP_FAILURES="3/600")
    fresh(app)
    make_binding(app, OWNER, CHILD, "child")
    client = app.test_client()
    early = settle_by_card(client, CARDS[OWNER], OWNER, [drug(100)], out_no="CARD-EARLY")
    assert early.status_code == 201
    for _ in range(3):
        assert settle_by_card(client, "M00000000000000", OWNER).status_code == 422
    limited = settle_by_card(client, CARDS[OWNER], OWNER)  # even a right card, once the limit is used up
    assert limited.status_code == 429 and limited.get_json()["error"]["code"] == "RATE_LIMITED"
    assert "Retry-After" in limited.headers
    # …and the document says so (the deep fuzz run got this 429 where the operation listed none).
    answers = client.get("/api/openapi.json").get_json()["paths"][URL]["post"]["responses"]
    assert "RATE_LIMITED" in answers["429"]["content"]["application/json"]["examples"]
    # A replay of a request settled before the limit was reached still gets its original answer (R13).
    replay = settle_by_card(client, CARDS[OWNER], OWNER, [drug(100)], out_no="CARD-EARLY")
    assert replay.status_code == 201 and replay.get_json() == early.get_json()
    # Another institution is not affected, and successes never count.
    for _ in range(5):
        assert settle_by_card(client, CARDS[OWNER], OWNER, [drug(100)], inst=PHARMACY).status_code == 201


def test_with_the_limit_store_down_card_look_ups_are_refused_not_let_through(app, client, family, monkeypatch):
    import redis

    from app.services.card_guard import CardLookupGuard

    down = CardLookupGuard(redis.Redis.from_url("redis://127.0.0.1:1/0"), (3, 600))  # nothing listens on port 1
    monkeypatch.setattr(app.extensions["domain"], "card_guard", down)
    for card in (CARDS[CHILD], "M00000000000000"):
        response = settle_by_card(client, card, CHILD, [drug(100)])
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert response.get_json()["error"]["details"]["unavailable"] == "rate_limiter"
    assert balance(app, OWNER) == 350_000


def test_records_show_how_each_settlement_was_authorised(app, client, sandbox, family):
    token = sign_in(client, sandbox, OWNER)
    settle_by_card(client, CARDS[CHILD], CHILD, [drug(1_000)])
    settle(client, issue(client, token, person_id(app, CHILD)), [drug(2_000)])
    items = client.get("/api/v1/records/deductions?role=owner", headers=bearer(token)).get_json()["items"]
    assert sorted((i["amount_fen"], i["auth_method"]) for i in items) == [(1_000, "card"), (2_000, "voucher")]
