"""Helpers for the binding tests: demo people, proofs, the pledge agreement, other regions' registries."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from app.demo import CHILD, COUSIN_ZIBO, NEIGHBOUR, OWNER, PARENT, RETIRED_INACTIVE, SPOUSE
from app.security.id_number import make_id_number
from tests.helpers import bearer, sign_in_alipay, signed_in_person

ROOT = Path(__file__).resolve().parents[1]

# name, social-security card number (app/demo.py)
PEOPLE = {
    OWNER: ("张伟", "M53262100000001"),
    SPOUSE: ("李娜", "M53262100000002"),
    CHILD: ("张小明", "M53262100000003"),
    PARENT: ("张建国", "M53262100000004"),
    NEIGHBOUR: ("王芳", "M53260100000005"),
    COUSIN_ZIBO: ("刘洋", "M37030200000006"),
    RETIRED_INACTIVE: ("赵敏", "M53262200000007"),
}

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(64)) + b"\xff\xd9"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def sign_in(client: Any, sandbox: Any, id_number: str) -> str:
    """A WeChat user verified as this demo (or test-registry) person; returns the access token."""
    return signed_in_person(client, sandbox, PEOPLE[id_number][0], id_number)


def sign_in_with_alipay(client: Any, sandbox: Any, id_number: str) -> str:
    """An Alipay user proven as this person by Alipay's certified identity (R21), with the reserved
    phone proven through my.getPhoneNumber when the demo registry has one."""
    import secrets

    from app.demo import DEMO_PHONES

    user_id = "2088" + str(secrets.randbelow(10**12)).zfill(12)
    token = sign_in_alipay(client, sandbox, user_id)["access_token"]
    sandbox.set_alipay_identity(user_id, PEOPLE[id_number][0], id_number)
    proof = {"alipay_auth_code": sandbox.issue_alipay_auth_code(user_id=user_id)}
    response = client.post("/api/v1/me/identity", json={"name": PEOPLE[id_number][0], "id_number": id_number,
                                                        "proof": proof}, headers=bearer(token))
    assert response.status_code == 200, response.get_json()
    if id_number in DEMO_PHONES:
        sandbox.set_alipay_phone(user_id, DEMO_PHONES[id_number])
        response = client.post("/api/v1/me/phone", json={"alipay_response": sandbox.alipay_phone_response(user_id)},
                               headers=bearer(token))
        assert response.status_code == 200, response.get_json()
    return token


def member(who: str, /, **changes: str) -> dict[str, str]:
    """The beneficiary as the owner types it (name, ID number, card number), with ``changes``."""
    name, card = PEOPLE[who]
    return {"name": name, "id_number": who, "social_card_no": card} | changes


def pledge(client: Any, **changes: Any) -> dict[str, Any]:
    current = client.get("/api/v1/pledges/current").get_json()
    return {"version": current["version"], "sha256": current["sha256"], "agreed": True} | changes


def bind(client: Any, token: str, id_number: str, relationship: str, documents: list[int] | None = None,
         **changes: Any) -> Any:
    body = {"beneficiary": member(id_number), "relationship": relationship,
            "proof_document_ids": documents or [], "pledge": pledge(client)} | changes
    return client.post("/api/v1/bindings", json=body, headers=bearer(token))


def bind_at_window(client: Any, staff_token: str, owner_id: str, id_number: str, relationship: str,
                   documents: list[int] | None = None, **changes: Any) -> Any:
    body = {"owner": {"id_number": owner_id}, "beneficiary": member(id_number), "relationship": relationship,
            "proof_document_ids": documents or [], "pledge": pledge(client)} | changes
    return client.post("/api/v1/staff/bindings", json=body, headers=bearer(staff_token))


def upload(client: Any, token: str, data: bytes = PNG, filename: str = "proof.png") -> Any:
    import io

    return client.post("/api/v1/documents", data={"file": (io.BytesIO(data), filename)},
                       headers=bearer(token), content_type="multipart/form-data")


def created(response: Any, status: int = 201) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    return response.get_json()


def error_code(response: Any) -> str:
    return response.get_json()["error"]["code"]


def records(client: Any, token: str, **query: Any) -> list[dict[str, Any]]:
    response = client.get("/api/v1/records/authorizations", query_string=query, headers=bearer(token))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["items"]


def policy_dir(tmp_path: Path, region: str, **values: Any) -> str:
    """A policy directory holding a copy of ``policies/<region>.toml`` with some values changed."""
    target = tmp_path / f"policies-{region}"
    target.mkdir(exist_ok=True)
    text = (ROOT / "policies" / f"{region}.toml").read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if key in values:
            value = values[key]
            line = f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}"
        lines.append(line)
    (target / f"{region}.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(target)


def pledge_dir(tmp_path: Path, extra: dict[str, str] | None = None) -> str:
    """A copy of pledges/ plus extra files (name → text)."""
    target = tmp_path / "pledges"
    shutil.copytree(ROOT / "pledges", target, dirs_exist_ok=True)
    for name, text in (extra or {}).items():
        (target / name).write_text(text, encoding="utf-8")
    return str(target)


# --- other regions: a Zibo family and a Xishuangbanna family ----------------------------------------

ZIBO_OWNER = make_id_number("370302", date(1985, 4, 4), 171)
ZIBO_SIBLING = make_id_number("370302", date(1988, 8, 8), 182)
ZIBO_GRANDCHILD = make_id_number("370303", date(2012, 2, 12), 193)
BANNA_OWNER = make_id_number("532801", date(1979, 6, 6), 211)
BANNA_GRANDPARENT = make_id_number("532801", date(1940, 1, 10), 222)
BANNA_SIBLING = make_id_number("532822", date(1983, 3, 3), 233)

PEOPLE.update({
    ZIBO_OWNER: ("孙丽", "M37030200000101"),
    ZIBO_SIBLING: ("孙强", "M37030200000102"),
    ZIBO_GRANDCHILD: ("孙小雨", "M37030300000103"),
    BANNA_OWNER: ("岩温", "M53280100000201"),
    BANNA_GRANDPARENT: ("玉香", "M53280100000202"),
    BANNA_SIBLING: ("岩罕", "M53282200000203"),
})


def other_regions_registry() -> dict[str, Any]:
    def person(number: str, kind: str, region: str) -> dict[str, str]:
        name, card = PEOPLE[number]
        return {"id_number": number, "name": name, "social_card_no": card, "insurance_type": kind,
                "region_code": region, "status": "active"}

    return {
        "as_of": datetime.now(UTC).isoformat(),
        "persons": [
            person(ZIBO_OWNER, "employee", "370302"),
            person(ZIBO_SIBLING, "resident", "370302"),
            person(ZIBO_GRANDCHILD, "resident", "370303"),
            person(BANNA_OWNER, "employee", "532801"),
            person(BANNA_GRANDPARENT, "resident", "532801"),
            person(BANNA_SIBLING, "resident", "532822"),
        ],
        "accounts": [{"id_number": ZIBO_OWNER, "balance_fen": 500000},
                     {"id_number": BANNA_OWNER, "balance_fen": 200000}],
        "households": [{"a": ZIBO_OWNER, "b": ZIBO_SIBLING, "relationship": "sibling"},
                       {"a": BANNA_GRANDPARENT, "b": BANNA_OWNER, "relationship": "grandchild"}],
        "institutions": [],
    }


def load_other_regions(app: Any) -> None:
    from app.extensions import app_session
    from app.services.registry import load_registry

    with app.app_context(), app_session() as session:
        load_registry(session, app.extensions["domain"].pii, other_regions_registry(), datetime.now(UTC))
