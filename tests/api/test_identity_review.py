"""An attacker's review of identity and binding (R2, R5, R11, R16, R21): what a stranger who knows a
victim's name, ID number, card number and phone number — none of them secrets — could still do.

Each test reproduces one finding on the code before its fix.
"""

from __future__ import annotations

from app.demo import NEIGHBOUR, OWNER
from tests.binding_helpers import PDF, bind, sign_in, upload
from tests.helpers import bearer


def verify(client, token, name, id_number, proof):
    return client.post("/api/v1/me/identity", json={"name": name, "id_number": id_number, "proof": proof},
                       headers=bearer(token))


def me(client, token):
    return client.get("/api/v1/me", headers=bearer(token)).get_json()


def reserve(client, demo, id_number, phone):
    response = client.post("/api/v1/staff/persons/phone", json={"id_number": id_number, "phone": phone},
                           headers=bearer(demo.tokens["window1"]))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


# --- a pending binding told a stranger that the beneficiary is suspended ------------------------


def test_a_pending_binding_does_not_tell_a_stranger_the_other_partys_suspension(client, sandbox, demo):
    # Finding: 王芳 is suspended as a beneficiary (staff's finding about her: e.g. reselling drugs).
    # Any eligible owner who knows her name, ID number and card number "binds" her as a parent with
    # any PDF: the binding only waits for review, staff will reject it, she never agreed — but the
    # answer said "suspended": true, so the stranger learned of her suspension, then withdrew.
    assert client.post("/api/v1/staff/suspensions", json={"beneficiary_id_number": NEIGHBOUR, "reason": "倒卖药品"},
                       headers=bearer(demo.tokens["admin1"])).status_code == 201
    stranger = sign_in(client, sandbox, OWNER)
    document = upload(client, stranger, PDF, "proof.pdf").get_json()["id"]
    response = bind(client, stranger, NEIGHBOUR, "parent", [document])
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    assert created["status"] == "pending_review"
    assert created["suspended"] is False
    shown = client.get(f"/api/v1/bindings/{created['id']}", headers=bearer(stranger)).get_json()
    assert shown["suspended"] is False
    listed = client.get("/api/v1/bindings", headers=bearer(stranger)).get_json()["items"]
    assert [b["suspended"] for b in listed] == [False]
    # Staff reviewing it see the suspension (it bears on the review).
    staff = client.get(f"/api/v1/staff/bindings/{created['id']}", headers=bearer(demo.tokens["window1"]))
    assert staff.get_json()["suspended"] is True
    # Once staff approve it the binding is hers and his, and the owner reads that it does not pay.
    approved = client.post(f"/api/v1/staff/bindings/{created['id']}/approve", json={"reason": "ok"},
                           headers=bearer(demo.tokens["window1"]))
    assert approved.status_code == 200, approved.get_json()
    assert client.get(f"/api/v1/bindings/{created['id']}", headers=bearer(stranger)).get_json()["suspended"] is True


def test_a_pending_binding_shows_the_callers_own_suspension(client, sandbox, demo):
    owner = sign_in(client, sandbox, OWNER)
    assert client.post("/api/v1/staff/suspensions", json={"owner_id_number": OWNER, "reason": "倒卖药品"},
                       headers=bearer(demo.tokens["admin1"])).status_code == 201
    document = upload(client, owner, PDF, "proof.pdf").get_json()["id"]
    created = bind(client, owner, NEIGHBOUR, "parent", [document]).get_json()
    assert created["status"] == "pending_review" and created["suspended"] is True
