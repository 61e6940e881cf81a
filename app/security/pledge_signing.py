"""Server signatures over pledge attestations (电子承诺书) — R4.

The service builds the attestation record (signer, pledge version and SHA-256, time, channel,
client IP, document hashes, …) as plain JSON values, signs its canonical bytes with Ed25519 and
stores record and signature. Verification recomputes the canonical bytes from the stored record,
so any change to any field fails.

Records should carry the signer's ``key_id`` so that, after PLEDGE_SIGNING_KEY is rotated, the
service knows which public key to verify an old record with.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.security.pii import decode_config_key

SIGNATURE_BYTES = 64
_B64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes that are signed: JSON with sorted keys, no whitespace, UTF-8 (not ASCII-escaped).

    Only str, int, bool, None, lists/tuples and str-keyed dicts are allowed. Floats are
    rejected (money is integer fen and float text is not stable); datetimes must be passed as
    ISO 8601 strings. Raises TypeError naming the offending path.
    """
    if not isinstance(record, dict):
        raise TypeError("the record must be a dict")
    _check_json_value(record, "$")
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class PledgeSigner:
    """Signs and verifies pledge attestation records with one Ed25519 key."""

    def __init__(self, seed32: bytes) -> None:
        if len(seed32) != 32:
            raise ValueError("the Ed25519 seed must be 32 bytes")
        self._private_key = Ed25519PrivateKey.from_private_bytes(seed32)
        self._public_key = self._private_key.public_key()
        self._public_raw = self._public_key.public_bytes(
            encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
        )
        self.key_id = hashlib.sha256(self._public_raw).hexdigest()[:8]

    @classmethod
    def from_config(cls, b64_seed: str) -> PledgeSigner:
        """Build from PLEDGE_SIGNING_KEY: URL-safe base64 of a 32-byte Ed25519 seed (SPEC §6)."""
        return cls(decode_config_key(b64_seed, name="PLEDGE_SIGNING_KEY"))

    def sign(self, record: dict[str, Any]) -> str:
        """The unpadded base64url Ed25519 signature over ``canonical(record)``."""
        signature = self._private_key.sign(canonical(record))
        return base64.urlsafe_b64encode(signature).rstrip(b"=").decode("ascii")

    def verify(self, record: dict[str, Any], signature: str) -> bool:
        """True only if ``signature`` is this key's signature over the record; never raises."""
        try:
            message = canonical(record)
            if not isinstance(signature, str) or not _B64URL.fullmatch(signature):
                return False
            unpadded = signature.rstrip("=")
            raw = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
            if len(raw) != SIGNATURE_BYTES:
                return False
            self._public_key.verify(raw, message)
        except (InvalidSignature, TypeError, ValueError, binascii.Error, RecursionError):
            return False
        return True

    def public_key_pem(self) -> str:
        """The public key as a SubjectPublicKeyInfo PEM, for anyone who wants to check offline."""
        return self._public_key.public_bytes(
            encoding=serialization.Encoding.PEM, format=serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def public_key_b64(self) -> str:
        """The raw 32-byte public key, unpadded base64url."""
        return base64.urlsafe_b64encode(self._public_raw).rstrip(b"=").decode("ascii")


def _check_json_value(value: Any, path: str) -> None:
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        raise TypeError(f"{path}: floats are not allowed in signed records")
    if isinstance(value, dict):
        for key, item in value.items():
            # json.dumps would turn 1 and "1" into the same key, so two records would sign alike.
            if not isinstance(key, str):
                raise TypeError(f"{path}: keys must be strings")
            _check_json_value(item, f"{path}.{key}")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json_value(item, f"{path}[{index}]")
        return
    raise TypeError(f"{path}: {type(value).__name__} is not allowed in signed records")
