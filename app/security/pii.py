"""Personal data at rest and in output (R17): field encryption, blind indexes, masking.

Names, ID numbers and social-security card numbers are stored as AES-256-GCM tokens
``v1.<kid>.<b64url(nonce + ciphertext)>``. The column's *context* (e.g. ``"person.name"``) is the
associated data, so a token copied into another column does not decrypt. Equality look-ups use a
keyed HMAC-SHA256 *blind index* instead of the plaintext.

Key rotation: the active key encrypts, every configured key decrypts, and ``needs_rotation`` tells
a re-encryption job which tokens to rewrite. The blind-index key must NOT change when PII_KEY
rotates (every stored index would stop matching), so when PII_KEY is rotated the index key must be
configured separately: before the first rotation, record ``index_key_b64_from(old PII_KEY)`` and
pass it as ``index_key_b64`` from then on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TOKEN_VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16

_KEY_B64 = re.compile(r"[A-Za-z0-9_-]{43}=?")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_KIND = re.compile(r"[a-z][a-z0-9_.]*")


class PiiTokenInvalid(ValueError):
    """A stored token cannot be decrypted: malformed, unknown key id, wrong context or tampered."""


def decode_config_key(value: str, *, name: str) -> bytes:
    """Decode a SPEC §6 key: URL-safe base64 (padding optional) of exactly 32 bytes.

    Raises ValueError naming the variable, never echoing the value. Generate one with
    ``secrets.token_urlsafe(32)``.
    """
    text = value.strip() if isinstance(value, str) else ""
    if not _KEY_B64.fullmatch(text):
        raise ValueError(
            f"{name} must be URL-safe base64 of 32 random bytes "
            "(43 characters, as made by secrets.token_urlsafe(32))"
        )
    raw = _b64url_decode(text.rstrip("="))
    # A 43-character string has 2 spare bits; only the canonical encoding is one key.
    if _b64url_encode(raw) != text.rstrip("="):
        raise ValueError(f"{name} is not canonical URL-safe base64")
    return raw


def key_id(key: bytes) -> str:
    """The id stored in each token: the first 8 hex characters of SHA-256 of the key."""
    return hashlib.sha256(key).hexdigest()[:8]


def derive_index_key(pii_key: bytes) -> bytes:
    """The blind-index key derived from a PII key (HKDF-SHA256, info ``b"blind-index"``)."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"blind-index").derive(pii_key)


def index_key_b64_from(pii_key_b64: str) -> str:
    """The index key derived from a PII_KEY, encoded for config: keep it when rotating PII_KEY."""
    return _b64url_encode(derive_index_key(decode_config_key(pii_key_b64, name="PII_KEY")))


class PiiCipher:
    """Encrypts, decrypts and blind-indexes personal data fields."""

    def __init__(self, keys: Mapping[str, bytes], active_key_id: str, index_key: bytes) -> None:
        for kid, key in keys.items():
            if len(key) != KEY_BYTES:
                raise ValueError(f"PII key {kid!r} must be {KEY_BYTES} bytes")
            if not re.fullmatch(r"[0-9a-f]{8}", kid):
                raise ValueError(f"PII key id {kid!r} must be 8 lowercase hex characters")
        if active_key_id not in keys:
            raise ValueError(f"active PII key id {active_key_id!r} is not among the configured keys")
        if len(index_key) < KEY_BYTES:
            raise ValueError(f"the blind-index key must be at least {KEY_BYTES} bytes")
        self._aeads = {kid: AESGCM(key) for kid, key in keys.items()}
        self._index_key = bytes(index_key)
        self.active_key_id = active_key_id

    @classmethod
    def from_config(
        cls,
        pii_key_b64: str,
        old_keys_b64: Iterable[str] = (),
        index_key_b64: str | None = None,
    ) -> PiiCipher:
        """Build from PII_KEY (active), earlier keys (PII_OLD_KEYS, decrypt only) and PII_INDEX_KEY.

        Without ``index_key_b64`` (None or empty) the index key is derived from PII_KEY, which is
        only right until PII_KEY is first rotated; from then on pass the original derived key.
        """
        active = decode_config_key(pii_key_b64, name="PII_KEY")
        keys = {key_id(active): active}
        for number, old_b64 in enumerate(old_keys_b64, start=1):
            old = decode_config_key(old_b64, name=f"PII_OLD_KEYS entry #{number}")
            keys.setdefault(key_id(old), old)
        if index_key_b64 is None or not index_key_b64.strip():
            if len(keys) > 1:
                # The derived key would silently change with the rotation and no look-up would match.
                raise ValueError("PII_INDEX_KEY is required once PII_KEY has been rotated (PII_OLD_KEYS is set): "
                                 "keep the blind-index key of the old PII_KEY (index_key_b64_from)")
            index_key = derive_index_key(active)
        else:
            index_key = decode_config_key(index_key_b64, name="PII_INDEX_KEY")
        return cls(keys, key_id(active), index_key)

    def encrypt(self, plaintext: str, *, context: str) -> str:
        """Encrypt ``plaintext`` for the column named by ``context`` with the active key."""
        if not isinstance(plaintext, str):
            raise TypeError("plaintext must be str")
        # Random 96-bit nonces are safe for far more than the 2**32 encryptions per key this service
        # will ever make; rotation resets the count anyway.
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aeads[self.active_key_id].encrypt(nonce, plaintext.encode("utf-8"), _aad(context))
        return f"{TOKEN_VERSION}.{self.active_key_id}.{_b64url_encode(nonce + sealed)}"

    def decrypt(self, token: str, *, context: str) -> str:
        """Decrypt a token made by ``encrypt`` with the same ``context``; raises PiiTokenInvalid."""
        kid, blob = self._parse(token)
        aead = self._aeads.get(kid)
        if aead is None:
            raise PiiTokenInvalid(f"no PII key with id {kid!r} is configured (an old key was dropped?)")
        try:
            plaintext = aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(context))
        except InvalidTag:
            raise PiiTokenInvalid(f"token does not decrypt for context {context!r}") from None
        return plaintext.decode("utf-8")

    def needs_rotation(self, token: str) -> bool:
        """True when the token was encrypted with a key other than the active one."""
        kid, _ = self._parse(token)
        return kid != self.active_key_id

    def blind_index(self, value: str, *, kind: str) -> str:
        """Hex HMAC-SHA256 of the normalized value, separated by ``kind`` (e.g. ``"id_number"``).

        Normalization (strip, NFKC, upper case) makes ``53262119800101123x`` and its full-width
        form index the same as ``53262119800101123X``. Different kinds never collide.
        """
        if not _KIND.fullmatch(kind):
            raise ValueError("kind must be a lowercase identifier such as 'id_number'")
        message = kind.encode("ascii") + b"\x00" + normalize_for_index(value).encode("utf-8")
        return hmac.new(self._index_key, message, hashlib.sha256).hexdigest()

    @staticmethod
    def _parse(token: str) -> tuple[str, bytes]:
        parts = token.split(".") if isinstance(token, str) else []
        if len(parts) != 3 or parts[0] != TOKEN_VERSION or not _B64URL.fullmatch(parts[2]):
            raise PiiTokenInvalid("not a v1 PII token")
        try:
            blob = _b64url_decode(parts[2])
        except (binascii.Error, ValueError):
            raise PiiTokenInvalid("PII token payload is not base64url") from None
        if len(blob) < NONCE_BYTES + TAG_BYTES:
            raise PiiTokenInvalid("PII token payload is too short")
        return parts[1], blob


def normalize_for_index(value: str) -> str:
    """The form of a value that the blind index sees: NFKC, stripped, upper case."""
    return unicodedata.normalize("NFKC", value).strip().upper()


def mask_name(name: str) -> str:
    """Mask every character but the last: ``张三`` → ``*三``, ``张三丰`` → ``**丰``, ``张`` → ``*``."""
    name = name.strip()
    if len(name) <= 1:
        return "*" * len(name)
    return "*" * (len(name) - 1) + name[-1]


def mask_id_number(id_number: str) -> str:
    """Keep the first 3 and last 4 characters: ``532***********123X``; length is kept."""
    id_number = id_number.strip()
    if len(id_number) <= 7:
        return "*" * len(id_number)
    return id_number[:3] + "*" * (len(id_number) - 7) + id_number[-4:]


def mask_card_no(card_no: str) -> str:
    """Keep the last 4 characters of a social-security card number; length is kept."""
    card_no = card_no.strip()
    if len(card_no) <= 4:
        return "*" * len(card_no)
    return "*" * (len(card_no) - 4) + card_no[-4:]


def mask_mobile(mobile: str) -> str:
    """Keep the first 3 and last 4 digits of a mobile number: ``138****5678``."""
    mobile = mobile.strip()
    if len(mobile) <= 7:
        return "*" * len(mobile)
    return mobile[:3] + "*" * (len(mobile) - 7) + mobile[-4:]


# "Looking like" an ID number means the birth-date shape too, so that 18-digit settlement numbers
# and the like stay readable in logs; every real ID number has that shape.
_DATE8 = r"(?:18|19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
_DATE6 = r"\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
_ID18 = re.compile(rf"[1-9]\d{{5}}{_DATE8}\d{{3}}[\dXx]")
_ID15 = re.compile(rf"[1-9]\d{{5}}{_DATE6}\d{{3}}")
# A mainland mobile number; after the country code written 0086, or 86 just after a "+" (kept).
_MOBILE = re.compile(r"1[3-9]\d{9}")
_MOBILE_0086 = re.compile(r"00861[3-9]\d{9}")
_MOBILE_86 = re.compile(r"861[3-9]\d{9}")

# A number as people type it: digit groups joined by separators of 1 to 3 spaces or dashes
# ("5326 0119 9001 011 234", "+86 138-1234-5678"), a leading "+", an X after the last group.
_RUN = re.compile(r"\+?\d+(?:[ -]{1,3}\d+)*[Xx]?")
_GROUP = re.compile(r"\d+")
_MOST_DIGITS = 18  # no pattern above holds more digits (0086 + a mobile number has 15)
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# Full-width X, plus, space and dashes as Chinese input methods type them, and the other dashes.
_FOLD = {"Ｘ": "X", "ｘ": "x", "＋": "+", "\u3000": " ", "\u00a0": " ", "－": "-", "\u2212": "-",
         **{chr(code): "-" for code in range(0x2010, 0x2016)}}


def _ascii_digit(match: re.Match[str]) -> str:
    char = match.group()
    return str(unicodedata.decimal(char)) if char.isdecimal() else _FOLD.get(char, char)


def mask_text(text: str) -> str:
    """Mask ID numbers (18 and old 15 digits) and mainland mobile numbers inside free text.

    Used by the request logger so that a raw ID number never reaches a log line, and for every
    free-text reason stored and shown. Found as well:

    - numbers typed in full-width (Chinese input methods) or other Unicode digits — the service
      accepts an ID number typed so (R18) — which come out masked in ASCII;
    - numbers typed in groups joined by spaces or dashes (``532601-19900101-1234``,
      ``138 1234 5678``): a run of such groups is masked where consecutive groups together make
      exactly an ID or mobile number (the longest first), separators kept;
    - mobile numbers after ``+86`` or ``0086``, the country code left readable.

    An ID number must have the birth-date shape (so 18-digit settlement numbers and the like stay
    readable), a mobile number 11 digits from ``13`` to ``19``. The rest of the text is left as it was.
    Social-security card numbers are not recognised here: docs/SECURITY.md says why.
    """
    # One character for one: positions in the folded copy are positions in the text.
    folded = text if text.isascii() else _NON_ASCII.sub(_ascii_digit, text)
    pieces, start = [], 0
    for run in _RUN.finditer(folded):
        for first, last in _numbers_in(run):
            pieces += [text[start:first], _masked_span(folded[first:last])]
            start = last
    return "".join(pieces) + text[start:] if pieces else text


def _numbers_in(run: re.Match[str]) -> list[tuple[int, int]]:
    """The spans of ``run`` (digit groups) that are an ID or mobile number, left to right."""
    text = run.group()
    spans = [group.span() for group in _GROUP.finditer(text)]
    found, i = [], 0
    while i < len(spans):
        plus = i == 0 and text.startswith("+")
        digits, ends = "", []
        for j in range(i, len(spans)):
            digits += text[spans[j][0]:spans[j][1]]
            if len(digits) > _MOST_DIGITS:
                break
            ends.append((j, digits))
        for j, digits in reversed(ends):  # the longest first: an ID number before a mobile in it
            end = spans[j][1]
            if j == len(spans) - 1 and text[-1] in "Xx" and _ID18.fullmatch(digits + "X"):
                end += 1
            elif not (_ID18.fullmatch(digits) or _ID15.fullmatch(digits) or _MOBILE.fullmatch(digits)
                      or _MOBILE_0086.fullmatch(digits) or (plus and _MOBILE_86.fullmatch(digits))):
                continue
            found.append((run.start() + (0 if plus else spans[i][0]), run.start() + end))
            i = j
            break
        i += 1
    return found


def _masked_span(number: str) -> str:
    """``number`` (folded) with its digits masked as R17 says; separators and a country code kept."""
    signs = [k for k, char in enumerate(number) if char in "0123456789Xx"]
    compact = "".join(number[k] for k in signs)
    if not (_ID18.fullmatch(compact) or _ID15.fullmatch(compact)):
        signs = signs[-11:]  # a mobile number: the country code before it stays readable
    hidden = set(signs[3:-4])
    return "".join("*" if k in hidden else char for k, char in enumerate(number))


def _aad(context: str) -> bytes:
    if not isinstance(context, str) or not context:
        raise ValueError("context must name the field, e.g. 'person.name'")
    return context.encode("utf-8")


def _b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
