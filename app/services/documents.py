"""Proof documents (R3, R17): upload, de-duplicate, store by SHA-256, read back to allowed people.

The bytes live outside the database under ``DOCUMENT_DIR/ab/cd/<sha256>``, written atomically
(temporary file, fsync, rename) after every check and before the row that points at them is
committed, so a committed row never points at a missing or half-written file (and a failed upload
removes the file it wrote). One row per (uploader, sha256): uploading
the same file again returns the first row. A document is readable by its uploader (the person,
from either mini-program), by the parties of a binding that uses it, and by staff; anyone else
gets 404, the same as for a document that does not exist.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import errors
from app.services import audit
from app.services.auth import Principal
from models import Binding, BindingDocument, Document, Person

log = logging.getLogger(__name__)

# Magic bytes, not the file name or the client's Content-Type, decide what a file is.
_MAGIC = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"%PDF-", "pdf"))
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "pdf": "application/pdf"}
EXTENSIONS = {"jpeg": "jpg", "png": "png", "pdf": "pdf"}
UPLOADING_STAFF_ROLES = ("window", "admin")
MAX_DOCUMENTS_PER_BINDING = 10


def sniff_kind(head: bytes) -> str | None:
    """``jpeg``, ``png`` or ``pdf`` from the first bytes of a file, else None."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return None


def document_path(root: str | Path, sha256: str) -> Path:
    """Where the bytes with this SHA-256 live: ``root/ab/cd/<sha256>``."""
    return Path(root) / sha256[:2] / sha256[2:4] / sha256


def store_bytes(root: str | Path, data: bytes) -> str:
    """Write ``data`` under its SHA-256 (once; identical bytes are kept once) and return the hash."""
    sha256 = hashlib.sha256(data).hexdigest()
    path = document_path(root, sha256)
    if path.is_file() and path.stat().st_size == len(data):
        return sha256
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return sha256


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk too.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_limited(stream: IO[bytes], max_bytes: int) -> bytes:
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise errors.PayloadTooLarge(
            "A document may be at most {mb} MB.", params={"mb": max_bytes // (1024 * 1024)},
            details={"max_bytes": max_bytes}
        )
    if not data:
        raise errors.ValidationFailed("The file is empty.", details={"field": "file"})
    return data


def document_view(document: Document) -> dict[str, Any]:
    return {"id": document.id, "sha256": document.sha256, "kind": document.kind,
            "size_bytes": document.size_bytes, "created_at": document.created_at}


def _uploader_filter(caller: Principal) -> Any:
    if caller.kind == "staff":
        return Document.uploader_staff_id == caller.id
    return Document.uploader_person_id == caller.person_id


def _check_may_upload(caller: Principal) -> None:
    if caller.kind == "staff":
        if caller.role not in UPLOADING_STAFF_ROLES:
            raise errors.Forbidden("This needs the role window or admin.")
    elif caller.person_id is None:
        raise errors.Forbidden("Verify your identity first.", details={"reason": "identity_not_verified"})


def upload_document(session: Session, root: str | Path, max_bytes: int, caller: Principal, stream: IO[bytes],
                    now: datetime, ip: str | None = None,
                    quota_bytes: int | None = None) -> tuple[dict[str, Any], bool]:
    """Store an uploaded proof (JPEG/PNG/PDF by magic bytes, at most ``max_bytes``).

    Returns the document view and whether a new row was created (False: this uploader had
    already uploaded the same bytes, and gets that row back). A person's uploads together may
    not exceed ``quota_bytes`` (413 with ``reason: quota``); the person row is locked while the
    sum is checked, so parallel uploads cannot overshoot it together.

    The file is written only after every check passed, inside the transaction and under a lock on
    its SHA-256, before the commit: a committed row never points at a missing file, and if the
    transaction fails a file that this upload created and no row uses is removed again.
    """
    _check_may_upload(caller)
    data = _read_limited(stream, max_bytes)
    kind = sniff_kind(data[:16])
    if kind is None:
        raise errors.UnsupportedMediaType("Upload a JPEG, PNG or PDF file.", details={"accepted": list(CONTENT_TYPES)})
    sha256 = hashlib.sha256(data).hexdigest()
    for attempt in (1, 2):
        created_file = False
        try:
            with session.begin():
                if caller.kind == "user":
                    session.execute(select(Person.id).where(Person.id == caller.person_id)
                                    .with_for_update(key_share=True))
                found = session.scalar(select(Document).where(_uploader_filter(caller), Document.sha256 == sha256))
                if found is not None:
                    return document_view(found), False
                if quota_bytes is not None and caller.kind == "user":
                    used = session.scalar(select(func.coalesce(func.sum(Document.size_bytes), 0))
                                          .where(Document.uploader_person_id == caller.person_id)) or 0
                    if used + len(data) > quota_bytes:
                        raise errors.PayloadTooLarge(
                            "Your uploaded documents have reached their storage limit.",
                            details={"reason": "quota", "quota_bytes": quota_bytes, "used_bytes": int(used)},
                        )
                document = Document(
                    sha256=sha256, kind=kind, size_bytes=len(data), created_at=now,
                    uploader_user_id=caller.id if caller.kind == "user" else None,
                    uploader_person_id=caller.person_id if caller.kind == "user" else None,
                    uploader_staff_id=caller.id if caller.kind == "staff" else None,
                )
                session.add(document)
                session.flush()
                audit.record(session, actor_kind=caller.kind, actor_id=caller.id, action="document.upload", at=now,
                             target_kind="document", target_id=document.id, ip=ip,
                             details={"sha256": sha256, "kind": kind, "size_bytes": len(data)})
                _lock_content(session, sha256)
                created_file = not document_path(root, sha256).is_file()
                store_bytes(root, data)
                return document_view(document), True
        except IntegrityError:
            _remove_unused(session, root, sha256, created_file)
            # The same uploader sent the same file twice at once; the other request's row wins.
            if attempt == 2:
                raise
        except BaseException:
            _remove_unused(session, root, sha256, created_file)
            raise
    raise AssertionError("unreachable")


def _lock_content(session: Session, sha256: str) -> None:
    """Serialise writers and cleaners of one content hash until the end of the transaction
    (PostgreSQL advisory lock; SQLite already runs one writing transaction at a time)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(int(sha256[:15], 16))))


def _remove_unused(session: Session, root: str | Path, sha256: str, created_file: bool) -> None:
    """After a failed upload: delete the file it created unless a committed row uses it."""
    if not created_file:
        return
    try:
        with session.begin():
            _lock_content(session, sha256)
            if session.scalar(select(Document.id).where(Document.sha256 == sha256).limit(1)) is None:
                document_path(root, sha256).unlink(missing_ok=True)
    except Exception:  # noqa: BLE001 — the database is away: an orphan file is harmless, a dangling row is not
        log.warning("could not check the file of a failed upload; left in place")


@dataclass(frozen=True)
class StoredFile:
    path: Path
    content_type: str
    download_name: str
    sha256: str


def open_document(session: Session, root: str | Path, caller: Principal, document_id: int, now: datetime,
                  ip: str | None = None) -> StoredFile:
    """The stored file of a document the caller may read (R17); 404 for anyone else."""
    with session.begin():
        query = select(Document).where(Document.id == document_id)
        if caller.kind != "staff":
            if caller.person_id is None:
                readable = Document.uploader_user_id == caller.id
            else:
                party = exists().where(
                    BindingDocument.document_id == Document.id,
                    Binding.id == BindingDocument.binding_id,
                    or_(Binding.owner_person_id == caller.person_id,
                        Binding.beneficiary_person_id == caller.person_id),
                )
                readable = or_(Document.uploader_person_id == caller.person_id,
                               Document.uploader_user_id == caller.id, party)
            query = query.where(readable)
        document = session.scalar(query)
        if document is None:
            raise errors.NotFound("No such document.")
        if caller.kind == "staff":
            audit.record(session, actor_kind="staff", actor_id=caller.id, action="document.read", at=now,
                         target_kind="document", target_id=document.id, ip=ip, details={"sha256": document.sha256})
    path = document_path(root, document.sha256)
    if not path.is_file():
        # A committed row always has its file (it is written first); a missing one is an incident.
        log.error("document file missing", extra={"fields": {"document_id": document.id}})
        raise FileNotFoundError(f"document {document.id} has no stored file")
    return StoredFile(path, CONTENT_TYPES[document.kind], f"{document.sha256}.{EXTENSIONS[document.kind]}",
                      document.sha256)


def documents_for_binding(session: Session, document_ids: list[int], *, owner_person_id: int,
                          staff_may_have_uploaded: bool) -> list[Document]:
    """The proof documents a new binding may use: the owner's own uploads (and, at the window,
    uploads by staff). Any other id is a 400 naming the ids, so nobody can attach a document
    they could not read."""
    wanted = sorted(set(document_ids))
    if len(wanted) > MAX_DOCUMENTS_PER_BINDING:
        raise errors.ValidationFailed("At most {count} proof documents.", params={"count": MAX_DOCUMENTS_PER_BINDING},
                                      details={"field": "proof_document_ids"})
    if not wanted:
        return []
    usable = Document.uploader_person_id == owner_person_id
    if staff_may_have_uploaded:
        usable = or_(usable, Document.uploader_staff_id.is_not(None))
    found = list(session.scalars(select(Document).where(Document.id.in_(wanted), usable).order_by(Document.id)))
    missing = sorted(set(wanted) - {document.id for document in found})
    if missing:
        raise errors.ValidationFailed("Unknown proof document(s); upload them first.",
                                      details={"field": "proof_document_ids", "unknown": missing})
    return found
