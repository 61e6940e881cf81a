"""Proof documents: upload by magic bytes, size limit, SHA-256 storage, who may read (R3, R17, R19)."""

from __future__ import annotations

import hashlib
import io

import pytest
from sqlalchemy import select

from app.demo import CHILD, NEIGHBOUR, OWNER, SPOUSE
from app.extensions import app_session
from models import AuditEvent
from tests.binding_helpers import (
    JPEG,
    PDF,
    PNG,
    bind,
    bind_at_window,
    created,
    error_code,
    sign_in,
    sign_in_with_alipay,
    upload,
)
from tests.conftest import docs_dir
from tests.helpers import bearer, sign_in_wechat


@pytest.fixture
def owner(client, sandbox, demo) -> str:
    return sign_in(client, sandbox, OWNER)


@pytest.mark.parametrize("data, kind, content_type", [
    (PNG, "png", "image/png"), (JPEG, "jpeg", "image/jpeg"), (PDF, "pdf", "application/pdf"),
])
def test_r17_a_proof_is_stored_outside_the_database_under_its_sha256_and_read_back_by_its_uploader(
        app, client, owner, data, kind, content_type):
    document = created(upload(client, owner, data, "whatever.bin"))
    sha256 = hashlib.sha256(data).hexdigest()
    assert document["sha256"] == sha256 and document["kind"] == kind and document["size_bytes"] == len(data)
    assert (docs_dir(app) / sha256[:2] / sha256[2:4] / sha256).read_bytes() == data
    response = client.get(f"/api/v1/documents/{document['id']}", headers=bearer(owner))
    assert response.status_code == 200
    assert response.data == data
    assert response.mimetype == content_type
    assert response.headers["Cache-Control"] == "private, no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_type_comes_from_the_magic_bytes_not_the_file_name(client, owner):
    assert created(upload(client, owner, PDF, "photo.jpg"))["kind"] == "pdf"
    response = upload(client, owner, b"GIF89a" + bytes(32), "proof.png")
    assert response.status_code == 415 and error_code(response) == "UNSUPPORTED_MEDIA_TYPE"
    response = upload(client, owner, "结婚证".encode(), "proof.pdf")
    assert response.status_code == 415


def test_a_file_over_5_mb_is_refused_with_413(client, owner):
    exactly = PNG + bytes(5 * 1024 * 1024 - len(PNG))
    assert created(upload(client, owner, exactly))["size_bytes"] == 5 * 1024 * 1024
    response = upload(client, owner, exactly + b"\x00")
    assert response.status_code == 413 and error_code(response) == "PAYLOAD_TOO_LARGE"
    far_over = upload(client, owner, exactly * 2)
    assert far_over.status_code == 413 and error_code(far_over) == "PAYLOAD_TOO_LARGE"


def test_an_empty_file_or_a_missing_file_field_is_a_400(client, owner):
    assert upload(client, owner, b"").status_code == 400
    response = client.post("/api/v1/documents", data={"other": "x"}, headers=bearer(owner),
                           content_type="multipart/form-data")
    assert response.status_code == 400 and error_code(response) == "VALIDATION_ERROR"


def test_the_same_file_from_the_same_person_is_one_document_and_stored_once(app, client, sandbox, owner):
    first = created(upload(client, owner))
    again = upload(client, owner)
    assert again.status_code == 200 and again.get_json()["id"] == first["id"]
    # the same person signed in from Alipay is the same uploader
    alipay = sign_in_with_alipay(client, sandbox, OWNER)
    assert created(upload(client, alipay), 200)["id"] == first["id"]
    neighbour = sign_in(client, sandbox, NEIGHBOUR)
    theirs = created(upload(client, neighbour))
    assert theirs["id"] != first["id"] and theirs["sha256"] == first["sha256"]
    stored = [p for p in docs_dir(app).rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert [p.name for p in stored].count(first["sha256"]) == 1


def test_r17_only_the_uploader_the_parties_of_its_binding_and_staff_may_read_a_proof(client, sandbox, owner, demo):
    document = created(upload(client, owner))
    binding = created(bind(client, owner, SPOUSE, "parent", [document["id"]]))
    assert binding["status"] == "pending_review"
    url = f"/api/v1/documents/{document['id']}"
    spouse = sign_in(client, sandbox, SPOUSE)
    assert client.get(url, headers=bearer(spouse)).data == PNG
    assert client.get(url, headers=bearer(sign_in_with_alipay(client, sandbox, OWNER))).status_code == 200
    for token in (sign_in(client, sandbox, NEIGHBOUR), sign_in_wechat(client, sandbox)["access_token"]):
        response = client.get(url, headers=bearer(token))
        assert response.status_code == 404 and error_code(response) == "NOT_FOUND"
    assert client.get(url).status_code == 401
    for staff in ("window1", "admin1", "auditor1"):
        assert client.get(url, headers=bearer(demo.tokens[staff])).data == PNG
    with app_session() as session, session.begin():
        reads = session.scalars(select(AuditEvent).where(AuditEvent.action == "document.read")).all()
        assert [(e.actor_kind, e.target_id) for e in reads] == [("staff", document["id"])] * 3


def test_an_unknown_document_is_404(client, owner):
    assert client.get("/api/v1/documents/424242", headers=bearer(owner)).status_code == 404


def test_uploading_needs_a_verified_identity(client, sandbox, demo):
    token = sign_in_wechat(client, sandbox)["access_token"]
    response = upload(client, token)
    assert response.status_code == 403
    assert response.get_json()["error"]["details"] == {"reason": "identity_not_verified"}


def test_window_staff_upload_scanned_proofs_for_a_window_binding_and_auditors_cannot_upload(client, demo):
    scanned = created(upload(client, demo.tokens["window1"], JPEG, "scan.jpg"))
    binding = created(bind_at_window(client, demo.tokens["window1"], OWNER, NEIGHBOUR, "parent", [scanned["id"]]))
    detail = client.get(f"/api/v1/staff/bindings/{binding['id']}", headers=bearer(demo.tokens["auditor1"]))
    assert detail.get_json()["documents"] == [{"id": scanned["id"], "sha256": scanned["sha256"], "kind": "jpeg"}]
    refused = upload(client, demo.tokens["auditor1"])
    assert refused.status_code == 403


def test_a_staff_scan_cannot_be_attached_to_an_online_binding(client, owner, demo):
    scanned = created(upload(client, demo.tokens["window1"], PDF))
    response = bind(client, owner, NEIGHBOUR, "parent", [scanned["id"]])
    assert response.status_code == 400 and response.get_json()["error"]["details"]["unknown"] == [scanned["id"]]


def test_r19_uploads_are_rate_limited_per_user(make_app, sandbox, demo):
    client = make_app(RATE_LIMIT_PER_USER="2/60").test_client()
    owner = sign_in(client, sandbox, OWNER)
    assert upload(client, owner).status_code == 201
    assert upload(client, owner, JPEG).status_code == 201
    limited = upload(client, owner, PDF)
    assert limited.status_code == 429 and "Retry-After" in limited.headers


def test_the_document_of_a_binding_the_user_is_no_party_to_stays_hidden_after_binding(client, sandbox, owner):
    document = created(upload(client, owner))
    created(bind(client, owner, CHILD, "child", [document["id"]]))
    child = sign_in(client, sandbox, CHILD)
    assert client.get(f"/api/v1/documents/{document['id']}", headers=bearer(child)).status_code == 200
    neighbour = sign_in(client, sandbox, NEIGHBOUR)
    assert client.get(f"/api/v1/documents/{document['id']}", headers=bearer(neighbour)).status_code == 404


def test_a_multipart_upload_without_the_right_content_type_is_a_400(client, owner):
    response = client.post("/api/v1/documents", data=io.BytesIO(PNG).read(), headers=bearer(owner),
                           content_type="image/png")
    assert response.status_code == 400


def test_a_document_is_served_as_an_attachment_never_inline(client, owner):
    document = created(upload(client, owner, PDF))
    response = client.get(f"/api/v1/documents/{document['id']}", headers=bearer(owner))
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert response.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_a_person_has_a_storage_quota_for_uploads(app, client, owner, monkeypatch):
    monkeypatch.setitem(app.config, "DOCUMENT_QUOTA_BYTES_PER_PERSON", len(PNG) + len(JPEG))
    created(upload(client, owner, PNG))
    created(upload(client, owner, JPEG))
    assert upload(client, owner, PNG).status_code == 200  # the same file again takes no more room
    third = PDF + b"% quota test"
    refused = upload(client, owner, third)
    assert refused.status_code == 413 and error_code(refused) == "PAYLOAD_TOO_LARGE"
    assert refused.get_json()["error"]["details"]["reason"] == "quota"
    sha = hashlib.sha256(third).hexdigest()
    assert not (docs_dir(app) / sha[:2] / sha[2:4] / sha).exists()  # refused before any byte is written


def test_a_failed_upload_leaves_no_file_behind(app, client, owner, monkeypatch):
    from app.services import documents

    def broken(*_args, **_kwargs):
        raise RuntimeError("audit store down")

    data = PNG + b"unique-to-this-test"
    written = []
    real_store = documents.store_bytes
    monkeypatch.setattr(documents, "store_bytes", lambda root, data: written.append(real_store(root, data)))
    monkeypatch.setattr(documents, "document_view", broken)  # fails after the file was written
    assert upload(client, owner, data).status_code == 500
    monkeypatch.undo()
    sha = hashlib.sha256(data).hexdigest()
    assert written == [sha]
    assert not (docs_dir(app) / sha[:2] / sha[2:4] / sha).exists()
    with app_session() as session, session.begin():
        assert session.scalar(select(AuditEvent.id).where(AuditEvent.action == "document.upload")) is None
