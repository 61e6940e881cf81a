"""Pledge texts (电子承诺书) and the signed attestation of a binding's pledge — R4.

Texts live in ``PLEDGE_DIR`` as ``v<N>.<lang>.md`` and are never edited in place: a new wording is a
new version (a test pins the SHA-256 of every published one). The book is loaded once at start-up
(``app.wiring``); the highest version is the current one, the only one a new binding may agree to.

The attestation is a plain JSON record — ids, hashes, channel, IP and time, never a name or an ID
number in clear (R17) — signed with the server's Ed25519 key; anyone can check it offline with the
public key published at ``GET /api/v1/pledges/public-key``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from app.errors import PledgeInvalid
from app.security.pledge_signing import PledgeSigner
from app.timefmt import iso

_FILE_NAME = re.compile(r"v([1-9][0-9]*)\.([a-z]{2})\.md")
LANGUAGE = "zh"
RECORD_SCHEMA = "copay.pledge.v1"


class PledgeBookError(ValueError):
    """PLEDGE_DIR has no usable pledge text."""


@dataclass(frozen=True)
class PledgeText:
    version: str
    language: str
    text: str
    sha256: str

    def view(self) -> dict[str, str]:
        return {"version": self.version, "language": self.language, "text": self.text, "sha256": self.sha256}


class PledgeBook:
    """Every published pledge text, by version; the highest version is current."""

    def __init__(self, texts: list[PledgeText]) -> None:
        if not texts:
            raise PledgeBookError("no pledge texts")
        self._texts = {text.version: text for text in texts}
        self._current = max(texts, key=lambda text: int(text.version[1:]))

    @classmethod
    def load(cls, directory: str | Path, language: str = LANGUAGE) -> PledgeBook:
        """Read ``v<N>.<language>.md`` files; the SHA-256 is of the exact bytes served."""
        directory = Path(directory)
        if not directory.is_dir():
            raise PledgeBookError(f"{directory}: pledge directory not found")
        texts = []
        for path in sorted(directory.iterdir()):
            match = _FILE_NAME.fullmatch(path.name)
            if not match or match.group(2) != language:
                continue
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PledgeBookError(f"{path}: not UTF-8") from exc
            if not text.strip():
                raise PledgeBookError(f"{path}: empty pledge text")
            texts.append(PledgeText(f"v{match.group(1)}", language, text, hashlib.sha256(raw).hexdigest()))
        if not texts:
            raise PledgeBookError(f"{directory}: no v<N>.{language}.md pledge texts")
        return cls(texts)

    def current(self) -> PledgeText:
        return self._current

    def get(self, version: str) -> PledgeText | None:
        return self._texts.get(version)

    def versions(self) -> list[str]:
        return sorted(self._texts, key=lambda version: int(version[1:]))

    def check_agreed(self, version: Any, sha256: Any, agreed: Any) -> PledgeText:
        """R4: the signer agreed to the current text, naming its version and hash; else PLEDGE_INVALID.

        An older version is refused too: a client that shows a stale text must fetch and show the
        current one before the owner commits to it.
        """
        current = self._current
        if agreed is not True:
            raise PledgeInvalid("The pledge must be read and agreed to.", details={"reason": "not_agreed"})
        if version != current.version:
            raise PledgeInvalid("This is not the current pledge text; please read it again.",
                                details={"reason": "not_current", "current_version": current.version})
        if not isinstance(sha256, str) or sha256.lower() != current.sha256:
            raise PledgeInvalid("The pledge hash does not match the current text.",
                                details={"reason": "hash_mismatch", "current_version": current.version})
        return current


def attestation(
    *,
    binding_id: int,
    pledge: PledgeText,
    signer_person_id: int,
    owner_person_id: int,
    beneficiary_person_id: int,
    beneficiary_id_bidx: str,
    relationship: str,
    channel: str,
    client_ip: str,
    document_sha256: list[str],
    signed_at: datetime,
    key_id: str,
    witness_staff_id: int | None = None,
) -> dict[str, Any]:
    """The canonical attestation record that the server signs (R4). JSON values only, no PII in clear."""
    return {
        "schema": RECORD_SCHEMA,
        "binding_id": binding_id,
        "pledge_version": pledge.version,
        "pledge_language": pledge.language,
        "pledge_sha256": pledge.sha256,
        "signer_person_id": signer_person_id,
        "owner_person_id": owner_person_id,
        "beneficiary_person_id": beneficiary_person_id,
        "beneficiary_id_bidx": beneficiary_id_bidx,
        "relationship": relationship,
        "channel": channel,
        "client_ip": client_ip,
        "document_sha256": sorted(set(document_sha256)),
        "witness_staff_id": witness_staff_id,
        "signed_at": iso(signed_at),
        "key_id": key_id,
    }


def verify_attestation(
    signer: PledgeSigner, record: Any, signature: Any, *, binding_id: int, version: str, text_sha256: str,
    key_id: str, owner_person_id: int, beneficiary_person_id: int, relationship: str, channel: str,
) -> bool:
    """R4: the stored record is this binding's, consistent with its row, and the signature holds.

    Checking the binding id and the rows' columns as well as the signature means a genuine record
    copied from another binding, a pledge row whose version was changed beside it, or a binding row
    re-pointed beside its record (another owner's account paying, another beneficiary, another
    relationship or channel than the owner signed for) fails too.
    """
    if not isinstance(record, dict):
        return False
    return (
        record.get("binding_id") == binding_id
        and record.get("owner_person_id") == owner_person_id
        and record.get("signer_person_id") == owner_person_id
        and record.get("beneficiary_person_id") == beneficiary_person_id
        and record.get("relationship") == relationship
        and record.get("channel") == channel
        and record.get("pledge_version") == version
        and record.get("pledge_sha256") == text_sha256
        and record.get("key_id") == key_id == signer.key_id
        and signer.verify(record, signature)
    )


def public_key_view(signer: PledgeSigner) -> dict[str, str]:
    """What a third party needs to check a pledge offline."""
    return {
        "algorithm": "Ed25519",
        "key_id": signer.key_id,
        "public_key_pem": signer.public_key_pem(),
        "public_key_b64": signer.public_key_b64(),
        "canonical_form": "the record as JSON: keys sorted, no whitespace, UTF-8 (not ASCII-escaped)",
        "signature_encoding": "base64url without padding",
    }
