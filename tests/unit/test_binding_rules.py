"""Pure pieces of binding (R3, R4, R17): file sniffing, content addressing, pledge texts and attestations."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.errors import PledgeInvalid, ValidationFailed
from app.security.pledge_signing import PledgeSigner
from app.services.bindings import clean_reason
from app.services.documents import document_path, sniff_kind, store_bytes
from app.services.pledges import PledgeBook, PledgeBookError, attestation, verify_attestation

SIGNER = PledgeSigner(bytes(range(32)))
OTHER_SIGNER = PledgeSigner(bytes(range(1, 33)))


@pytest.mark.parametrize("head, kind", [
    (b"\xff\xd8\xff\xe0rest", "jpeg"), (b"\x89PNG\r\n\x1a\nrest", "png"), (b"%PDF-1.7\n", "pdf"),
    (b"GIF89a", None), (b"\x89PNG", None), (b"", None), (b"<html>", None), (b"PK\x03\x04", None),
])
def test_r3_a_proof_is_recognised_by_its_magic_bytes(head, kind):
    assert sniff_kind(head) == kind


def test_r17_a_document_lives_under_two_levels_of_its_sha256(tmp_path):
    sha = "ab" + "cd" + "0" * 60
    assert document_path(tmp_path, sha) == tmp_path / "ab" / "cd" / sha


def test_r17_identical_bytes_are_stored_once_and_no_temporary_file_is_left(tmp_path):
    data = b"%PDF-1.4 proof"
    first = store_bytes(tmp_path, data)
    second = store_bytes(tmp_path, data)
    assert first == second == hashlib.sha256(data).hexdigest()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [document_path(tmp_path, first)] and files[0].read_bytes() == data


def test_r17_a_truncated_stored_file_is_rewritten(tmp_path):
    data = b"\x89PNG\r\n\x1a\n" + bytes(100)
    sha = store_bytes(tmp_path, data)
    document_path(tmp_path, sha).write_bytes(data[:10])
    store_bytes(tmp_path, data)
    assert document_path(tmp_path, sha).read_bytes() == data


def book(tmp_path: Path, **texts: str) -> PledgeBook:
    for name, text in texts.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return PledgeBook.load(tmp_path)


def test_r4_the_highest_version_is_current_by_number_not_by_name(tmp_path):
    pledges = book(tmp_path, **{"v2.zh.md": "二", "v10.zh.md": "十", "v1.zh.md": "一", "README.md": "x",
                                "v3.en.md": "three"})
    assert pledges.current().version == "v10"
    assert pledges.versions() == ["v1", "v2", "v10"]
    assert pledges.get("v2").sha256 == hashlib.sha256("二".encode()).hexdigest()
    assert pledges.get("v3") is None


@pytest.mark.parametrize("files", [{}, {"README.md": "x"}, {"v1.zh.md": "  \n"}])
def test_r4_a_pledge_directory_without_a_usable_text_is_refused(tmp_path, files):
    with pytest.raises(PledgeBookError):
        book(tmp_path, **files)


def test_r4_only_the_current_text_agreed_with_its_hash_is_accepted(tmp_path):
    pledges = book(tmp_path, **{"v1.zh.md": "一", "v2.zh.md": "二"})
    current = pledges.current()
    assert pledges.check_agreed("v2", current.sha256.upper(), True) is current
    for version, sha, agreed, reason in (("v2", current.sha256, False, "not_agreed"),
                                         ("v2", current.sha256, "true", "not_agreed"),
                                         ("v1", pledges.get("v1").sha256, True, "not_current"),
                                         ("v2", pledges.get("v1").sha256, True, "hash_mismatch"),
                                         ("v2", None, True, "hash_mismatch")):
        with pytest.raises(PledgeInvalid) as caught:
            pledges.check_agreed(version, sha, agreed)
        assert caught.value.details["reason"] == reason


def _record(tmp_path, **changes):
    text = book(tmp_path, **{"v1.zh.md": "承诺"}).current()
    values = dict(binding_id=7, pledge=text, signer_person_id=1, owner_person_id=1, beneficiary_person_id=2,
                  beneficiary_id_bidx="f" * 64, relationship="child", channel="wechat", client_ip="203.0.113.9",
                  document_sha256=["b" * 64, "a" * 64, "b" * 64], signed_at=datetime(2025, 3, 1, 1, 30, tzinfo=UTC),
                  key_id=SIGNER.key_id) | changes
    return text, attestation(**values)


def test_r4_the_attestation_holds_ids_and_hashes_with_the_time_in_shanghai(tmp_path):
    text, record = _record(tmp_path)
    assert record["signed_at"] == "2025-03-01T09:30:00.000+08:00"
    assert record["document_sha256"] == ["a" * 64, "b" * 64]
    assert record["pledge_sha256"] == text.sha256 and record["witness_staff_id"] is None


def test_r4_a_signed_attestation_verifies_only_unchanged_for_its_own_binding_and_key(tmp_path):
    text, record = _record(tmp_path)
    signature = SIGNER.sign(record)
    check = dict(binding_id=7, version="v1", text_sha256=text.sha256, key_id=SIGNER.key_id, owner_person_id=1,
                 beneficiary_person_id=2, relationship="child", channel="wechat")
    assert verify_attestation(SIGNER, record, signature, **check) is True
    for changed in ({"owner_person_id": 3}, {"beneficiary_person_id": 3}, {"relationship": "spouse"},
                    {"channel": "window"}):  # the binding row re-pointed beside its genuine record
        assert verify_attestation(SIGNER, record, signature, **(check | changed)) is False
    assert verify_attestation(SIGNER, record | {"client_ip": "198.51.100.1"}, signature, **check) is False
    assert verify_attestation(SIGNER, record, signature, **(check | {"binding_id": 8})) is False
    assert verify_attestation(SIGNER, record, signature, **(check | {"version": "v2"})) is False
    assert verify_attestation(OTHER_SIGNER, record, signature, **check) is False
    forged = base64.urlsafe_b64encode(bytes(64)).decode().rstrip("=")
    assert verify_attestation(SIGNER, record, forged, **check) is False
    assert verify_attestation(SIGNER, "not a record", signature, **check) is False


def test_r17_a_reason_is_trimmed_and_id_and_mobile_numbers_in_it_are_masked():
    assert clean_reason("  套现  ") == "套现"
    assert clean_reason(None) is None and clean_reason("   ") is None
    assert clean_reason("举报 532621198001011237 电话 13812345678") == "举报 532***********1237 电话 138****5678"
    with pytest.raises(ValidationFailed):
        clean_reason("", required=True)
    with pytest.raises(ValidationFailed):
        clean_reason("x" * 501)
