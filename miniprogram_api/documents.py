"""Proof documents (R3, R17): upload and read back. Window staff use the same endpoints with
their staff token (they upload scanned paper proofs and read every proof to review it)."""

from __future__ import annotations

from flask import current_app, send_file

from app.envelope import Blueprint
from app.services import documents
from app.web import client_ip, now, principal, rate_limited, session, signed_in
from miniprogram_api.binding_schemas import DocumentSchema, UploadSchema

bp = Blueprint("documents", __name__, description="Proof documents")


@bp.post("")
@signed_in
@rate_limited("upload")
@bp.arguments(UploadSchema, location="files")
@bp.response(201, DocumentSchema)
@bp.alt_response(200, schema=DocumentSchema, description="The same file was uploaded before: the first upload.")
def upload(files):
    """Upload a proof (JPEG, PNG or PDF, at most 5 MB); the same file again returns the first upload."""
    config = current_app.config
    view, created = documents.upload_document(session(), config["DOCUMENT_DIR"], config["MAX_DOCUMENT_BYTES"],
                                              principal(), files["file"].stream, now(), client_ip(),
                                              quota_bytes=config.get("DOCUMENT_QUOTA_BYTES_PER_PERSON"))
    return view, 201 if created else 200


@bp.get("/<int:document_id>")
@signed_in
def download(document_id):
    """The file, to its uploader, the parties of a binding that uses it, and staff (404 otherwise)."""
    stored = documents.open_document(session(), current_app.config["DOCUMENT_DIR"], principal(), document_id,
                                     now(), client_ip())
    # An attachment, never rendered inline: an uploaded PDF or image cannot run in our origin.
    response = send_file(stored.path, mimetype=stored.content_type, download_name=stored.download_name,
                         as_attachment=True, etag=stored.sha256, max_age=0)
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
