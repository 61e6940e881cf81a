"""QR e-vouchers (R12): who may get one, its shape, that only its hash is stored, the QR images, R19."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from app.extensions import app_session
from models import AuditEvent, Binding, Person, Voucher
from tests.helpers import bearer, sign_in_wechat
from tests.money_helpers import CHILD, NEIGHBOUR, OWNER, PARENT, SPOUSE, fresh, issue, make_binding, person_id, sign_in


@pytest.fixture
def owner(app, demo, client, sandbox):
    fresh(app)
    return sign_in(client, sandbox, OWNER)


def post_voucher(client, token, person=None):
    return client.post("/api/v1/vouchers", json={} if person is None else {"person_id": person},
                       headers=bearer(token))


def test_r12_a_voucher_for_yourself_has_the_national_28_digit_shape(app, client, owner):
    response = post_voucher(client, owner)
    assert response.status_code == 201
    body = response.get_json()
    code = body["code"]
    assert len(code) == 28 and code.isdigit()
    assert code.startswith("424") and code.endswith("0000") and code[22:24] == "53"  # 张伟 is insured in Yunnan
    assert body["person"] == {"person_id": person_id(app, OWNER), "name": "*伟",
                              "id_number": OWNER[:3] + "*" * 11 + OWNER[-4:]}
    assert body["ttl_seconds"] == 120
    expires = datetime.fromisoformat(body["expires_at"])
    assert expires.utcoffset() == timedelta(hours=8)
    assert timedelta(seconds=110) < expires - datetime.now(UTC) <= timedelta(seconds=120)


def test_r12_only_a_keyed_hash_of_the_code_is_stored(app, client, owner):
    code = issue(client, owner)
    with app_session() as s, s.begin():
        stored = s.scalar(select(Voucher.code_hash))
    assert code not in stored and len(stored) == 64
    assert stored == app.extensions["domain"].money.vouchers.code_hash(code)


def test_r12_issuing_a_new_voucher_does_not_revoke_the_unexpired_one(app, client, owner):
    first, second = issue(client, owner), issue(client, owner)
    assert first != second
    with app_session() as s, s.begin():
        assert s.scalars(select(Voucher.used_at)).all() == [None, None]


def test_r12_an_owner_gets_a_family_code_for_an_actively_bound_child(app, client, owner):
    binding = make_binding(app, OWNER, CHILD, "child")
    body = post_voucher(client, owner, person_id(app, CHILD)).get_json()
    assert body["person"]["name"] == "**明"
    with app_session() as s, s.begin():
        voucher = s.scalar(select(Voucher))
        audit = s.scalar(select(AuditEvent).where(AuditEvent.action == "voucher.issue"))
    assert (voucher.person_id, voucher.holder_person_id, voucher.binding_id) == (
        person_id(app, CHILD), person_id(app, OWNER), binding)
    assert audit.details == {"person_id": person_id(app, CHILD), "binding_id": binding}


@pytest.mark.parametrize("status", ["pending_review", "suspended", "unbound"])
def test_r12_a_family_code_needs_an_active_binding(app, client, owner, status):
    make_binding(app, OWNER, CHILD, "child", status=status)
    response = post_voucher(client, owner, person_id(app, CHILD))
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "BINDING_NOT_ACTIVE"


def test_r16_a_person_you_have_no_binding_with_is_not_found(app, client, owner):
    for someone in (person_id(app, NEIGHBOUR), 999_999):
        response = post_voucher(client, owner, someone)
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "NOT_FOUND"


def test_r12_a_beneficiary_cannot_issue_a_code_for_the_owner(app, client, sandbox, owner):
    make_binding(app, OWNER, SPOUSE, "spouse")
    spouse = sign_in(client, sandbox, SPOUSE)
    assert post_voucher(client, spouse, person_id(app, OWNER)).status_code == 404


def test_r12_an_inactive_person_gets_no_voucher(app, client, owner):
    make_binding(app, OWNER, PARENT, "parent")
    with app_session() as s, s.begin():
        s.execute(update(Person).where(Person.id == person_id(app, PARENT)).values(status="inactive"))
    response = post_voucher(client, owner, person_id(app, PARENT))
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "BENEFICIARY_NOT_ELIGIBLE"


def test_a_user_who_has_not_verified_their_identity_gets_no_voucher(app, client, sandbox, owner):
    token = sign_in_wechat(client, sandbox)["access_token"]
    assert post_voucher(client, token).status_code == 403


def test_a_staff_token_cannot_issue_vouchers(app, client, demo, owner):
    assert post_voucher(client, demo.tokens["window1"]).status_code == 403


def test_r12_the_holder_sees_the_voucher_as_png_and_svg(app, client, owner):
    code = issue(client, owner)
    png = client.post("/api/v1/vouchers/qr.png", json={"code": code}, headers=bearer(owner))
    svg = client.post("/api/v1/vouchers/qr.svg", json={"code": code}, headers=bearer(owner))
    assert png.status_code == 200 and png.mimetype == "image/png" and png.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml" and b"<svg" in svg.data
    assert png.headers["Cache-Control"] == "no-store"


def test_the_voucher_code_never_appears_in_a_url(app, client, owner):
    code = issue(client, owner)
    assert client.get(f"/api/v1/vouchers/{code}/qr.png", headers=bearer(owner)).status_code == 404
    for rule in app.url_map.iter_rules():
        assert "code" not in rule.arguments, rule.rule


def test_r12_the_qr_image_encodes_exactly_the_voucher_code(app, client, owner):
    import segno

    from app.services.vouchers import render_qr

    code = issue(client, owner)
    png = client.post("/api/v1/vouchers/qr.png", json={"code": code}, headers=bearer(owner)).data
    assert png == render_qr(code, "png")
    assert segno.make(code, error="m", micro=False).mode == "numeric"  # digits: the smallest symbol


def test_r16_no_one_else_sees_the_voucher_image(app, client, sandbox, owner):
    code = issue(client, owner)
    other = sign_in(client, sandbox, SPOUSE)
    assert client.post("/api/v1/vouchers/qr.png", json={"code": code}, headers=bearer(other)).status_code == 404
    assert client.post("/api/v1/vouchers/qr.png", json={"code": "4240000000000000000000530000"},
                       headers=bearer(owner)).status_code == 404
    assert client.post("/api/v1/vouchers/qr.png", json={"code": code}).status_code == 401


def test_r12_an_expired_voucher_is_not_rendered(app, client, owner):
    code = issue(client, owner)
    with app_session() as s, s.begin():
        s.execute(update(Voucher).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    response = client.post("/api/v1/vouchers/qr.svg", json={"code": code}, headers=bearer(owner))
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "VOUCHER_EXPIRED"


def test_r12_a_suspended_beneficiary_still_gets_a_voucher(app, client, owner):
    from models import StaffUser, Suspension

    make_binding(app, OWNER, CHILD, "child")
    with app_session() as s, s.begin():
        s.add(Suspension(scope="beneficiary", person_id=person_id(app, CHILD), reason="resale",
                         starts_at=datetime.now(UTC), created_by_staff_id=s.scalar(select(StaffUser.id).limit(1)),
                         created_at=datetime.now(UTC)))
    assert post_voucher(client, owner, person_id(app, CHILD)).status_code == 201


def test_r19_voucher_issue_is_rate_limited_per_user(make_app, demo, sandbox):
    app = make_app(RATE_LIMIT_PER_USER="3/60")
    fresh(app)
    client = app.test_client()
    with app.app_context():
        token = sign_in(client, sandbox, OWNER)
        statuses = [post_voucher(client, token).status_code for _ in range(4)]
        limited = post_voucher(client, token)
    assert statuses == [201, 201, 201, 429]
    assert limited.get_json()["error"]["code"] == "RATE_LIMITED" and int(limited.headers["Retry-After"]) >= 1


def test_r12_a_binding_made_active_later_allows_the_family_code(app, client, owner):
    binding = make_binding(app, OWNER, CHILD, "child", status="pending_review")
    assert post_voucher(client, owner, person_id(app, CHILD)).status_code == 422
    with app_session() as s, s.begin():
        s.execute(update(Binding).where(Binding.id == binding).values(status="active", effective_at=datetime.now(UTC)))
    assert post_voucher(client, owner, person_id(app, CHILD)).status_code == 201


def test_a_post_without_a_body_is_a_voucher_for_yourself(app, client, owner):
    response = client.post("/api/v1/vouchers", headers=bearer(owner))
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["person"]["person_id"] == person_id(app, OWNER)
