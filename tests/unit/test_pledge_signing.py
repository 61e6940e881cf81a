"""R4: every pledge attestation carries a server signature that a tampered record fails."""

import base64
import secrets

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from app.security.pledge_signing import PledgeSigner, canonical


def attestation() -> dict:
    return {
        "binding_id": 42,
        "signer_person_id": 7,
        "signer_name": "*三",
        "pledge_version": "2025-01",
        "pledge_sha256": "9f" * 32,
        "signed_at": "2025-03-01T09:30:00+08:00",
        "channel": "wechat",
        "client_ip": "203.0.113.9",
        "document_sha256": ["ab" * 32],
        "agreed": True,
        "signer_key_id": "0a1b2c3d",
    }


@pytest.fixture
def signer() -> PledgeSigner:
    return PledgeSigner(secrets.token_bytes(32))


def test_r4_canonical_json_sorts_keys_and_has_no_whitespace_or_escapes() -> None:
    assert canonical({"b": [1, True, None], "a": "张三"}) == '{"a":"张三","b":[1,true,null]}'.encode()


def test_r4_canonical_json_ignores_key_insertion_order() -> None:
    record = attestation()
    assert canonical(record) == canonical(dict(reversed(list(record.items()))))


@pytest.mark.parametrize(
    "record", [{"amount": 1.5}, {"nested": {"x": [float("nan")]}}, {1: "int key"}, {"when": object()}]
)
def test_r4_canonical_json_refuses_floats_and_non_json_values(record: dict) -> None:
    with pytest.raises(TypeError):
        canonical(record)


def test_r4_a_signed_record_verifies(signer: PledgeSigner) -> None:
    record = attestation()
    assert signer.verify(record, signer.sign(record))


@pytest.mark.parametrize(
    ("field", "value"),
    [("signer_person_id", 8), ("pledge_version", "2025-02"), ("channel", "alipay"), ("document_sha256", [])],
)
def test_r4_a_tampered_record_fails_verification(signer: PledgeSigner, field: str, value: object) -> None:
    record = attestation()
    signature = signer.sign(record)
    record[field] = value
    assert not signer.verify(record, signature)


def test_r4_an_added_field_fails_verification(signer: PledgeSigner) -> None:
    record = attestation()
    signature = signer.sign(record)
    assert not signer.verify({**record, "extra": 1}, signature)


def test_r4_another_key_signature_fails_verification(signer: PledgeSigner) -> None:
    record = attestation()
    assert not signer.verify(record, PledgeSigner(secrets.token_bytes(32)).sign(record))


@pytest.mark.parametrize("signature", ["", "not base64!", "AAAA", "A" * 86, None, 12, "A" * 86 + "=="])
def test_r4_verify_returns_false_for_bad_signatures_without_raising(
    signer: PledgeSigner, signature: object
) -> None:
    assert signer.verify(attestation(), signature) is False  # type: ignore[arg-type]


@pytest.mark.parametrize("record", [None, [], {"amount": 1.5}, "text"])
def test_r4_verify_returns_false_for_bad_records_without_raising(
    signer: PledgeSigner, record: object
) -> None:
    assert signer.verify(record, signer.sign(attestation())) is False  # type: ignore[arg-type]


def test_r4_a_padded_signature_verifies_too(signer: PledgeSigner) -> None:
    record = attestation()
    signature = signer.sign(record)
    assert "=" not in signature
    assert signer.verify(record, signature + "==")


def test_r4_the_published_public_keys_verify_independently(signer: PledgeSigner) -> None:
    record = attestation()
    raw_signature = base64.urlsafe_b64decode(signer.sign(record) + "==")
    from_pem = load_pem_public_key(signer.public_key_pem().encode())
    from_raw = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(signer.public_key_b64() + "="))
    from_pem.verify(raw_signature, canonical(record))  # type: ignore[union-attr, call-arg]
    from_raw.verify(raw_signature, canonical(record))


def test_r4_the_signer_is_built_from_pledge_signing_key_and_is_deterministic() -> None:
    seed_b64 = secrets.token_urlsafe(32)
    first, second = PledgeSigner.from_config(seed_b64), PledgeSigner.from_config(seed_b64)
    assert first.sign(attestation()) == second.sign(attestation())
    assert first.key_id == second.key_id and len(first.key_id) == 8
    assert first.public_key_b64() == second.public_key_b64()


def test_r4_a_malformed_pledge_signing_key_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="PLEDGE_SIGNING_KEY"):
        PledgeSigner.from_config("too-short")
