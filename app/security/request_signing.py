"""Institution request signatures (SPEC §5, server-to-server API).

An institution sends ``X-Inst-Code``, ``X-Timestamp`` (unix seconds), ``X-Nonce`` and
``X-Signature`` = lowercase hex HMAC-SHA256(institution secret, string to sign), where the string
to sign is ``METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\nsha256hex(body)``; PATH is the full path from
``/api/v1`` plus ``?query`` when present, and body the exact bytes sent (empty for GET).

Order of checks in ``verify_signature``: signature first, then the timestamp window, so
``TIMESTAMP_OUT_OF_WINDOW`` is only ever reported to a caller who holds the secret (it then means
"your clock is off"). A timestamp that is not an integer number of seconds is reported as
``TIMESTAMP_OUT_OF_WINDOW`` too (after the signature check), since it can never be inside the
window.

Nonce single use is not checked here because it needs storage: the caller checks and records the
nonce only *after* ``verify_signature`` succeeded (so forged requests cannot burn nonces), and keeps
each nonce for at least ``2 * window`` seconds, the span of timestamps that are accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from app.errors import SignatureInvalid, TimestampOutOfWindow

DEFAULT_WINDOW_SECONDS = 300

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")


def string_to_sign(method: str, path_with_query: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """``METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\nsha256hex(body)`` as UTF-8 bytes.

    Raises ValueError when a field contains a line break or other control character, which would
    let two different requests share one string to sign.
    """
    fields = (method, path_with_query, timestamp, nonce)
    if any(not isinstance(field, str) or _has_control_character(field) for field in fields):
        raise ValueError("method, path, timestamp and nonce must be text without control characters")
    body_hash = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{path_with_query}\n{timestamp}\n{nonce}\n{body_hash}".encode()


def sign(
    secret: bytes | str, method: str, path_with_query: str, timestamp: str, nonce: str, body: bytes
) -> str:
    """Lowercase hex HMAC-SHA256 of the string to sign, as institutions compute it."""
    message = string_to_sign(method, path_with_query, timestamp, nonce, body)
    return hmac.new(_secret_bytes(secret), message, hashlib.sha256).hexdigest()


def verify_signature(
    secret: bytes | str,
    signature_hex: str,
    method: str,
    path_with_query: str,
    timestamp: str,
    nonce: str,
    body: bytes,
    *,
    now_unix: int,
    window: int = DEFAULT_WINDOW_SECONDS,
) -> None:
    """Raise SignatureInvalid or TimestampOutOfWindow unless the request is authentic and fresh.

    The comparison is constant-time. Upper-case hex is accepted as well as lower-case. An empty
    secret is a configuration error (ValueError), not the client's fault.
    """
    if not isinstance(signature_hex, str) or not _SIGNATURE.fullmatch(signature_hex):
        raise SignatureInvalid("X-Signature must be 64 hex characters.")
    key = _secret_bytes(secret)
    try:
        message = string_to_sign(method, path_with_query, timestamp, nonce, body)
    except ValueError:
        raise SignatureInvalid("The signed request fields contain control characters.") from None
    expected = hmac.new(key, message, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature_hex.lower()):
        raise SignatureInvalid()
    if not _TIMESTAMP.fullmatch(timestamp):
        raise TimestampOutOfWindow("X-Timestamp must be unix time in whole seconds.")
    if abs(now_unix - int(timestamp)) > window:
        raise TimestampOutOfWindow(
            f"X-Timestamp must be within {window} seconds of the server time.",
            details={"server_time": now_unix},
        )


def _secret_bytes(secret: bytes | str) -> bytes:
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not raw:
        raise ValueError("the institution secret is empty")
    return raw


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _has_control_character(text: str) -> bool:
    return _CONTROL.search(text) is not None
