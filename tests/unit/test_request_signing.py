"""SPEC §5 institution auth: HMAC-SHA256 over METHOD, PATH, TIMESTAMP, NONCE and the body hash."""

import hashlib
import hmac

import pytest

from app.errors import SignatureInvalid, TimestampOutOfWindow
from app.security.request_signing import sign, string_to_sign, verify_signature

SECRET = "inst-secret-H5326001"
NOW = 1_740_792_600
PATH = "/api/v1/institution/settlements"
BODY = b'{"out_settlement_no":"S1","voucher_code":"4241","items":[]}'


def signed(**overrides: object) -> dict:
    request = {
        "method": "POST", "path_with_query": PATH, "timestamp": str(NOW), "nonce": "n-0001", "body": BODY
    }
    request.update(overrides)
    return {**request, "signature_hex": sign(SECRET, **request)}  # type: ignore[arg-type]


def verify(request: dict, *, secret: str = SECRET, now_unix: int = NOW) -> None:
    verify_signature(secret, now_unix=now_unix, **request)


def test_the_string_to_sign_has_five_lines_ending_with_the_body_hash() -> None:
    assert string_to_sign("post", "/api/v1/x?a=1", "1740792600", "abc", b"{}") == (
        b"POST\n/api/v1/x?a=1\n1740792600\nabc\n" + hashlib.sha256(b"{}").hexdigest().encode()
    )


def test_the_signature_is_lowercase_hex_hmac_sha256_as_institutions_compute_it() -> None:
    expected = hmac.new(
        SECRET.encode(),
        f"GET\n{PATH}/S1\n{NOW}\nn1\n{hashlib.sha256(b'').hexdigest()}".encode(),
        hashlib.sha256,
    ).hexdigest()
    assert sign(SECRET, "GET", f"{PATH}/S1", str(NOW), "n1", b"") == expected
    assert sign(SECRET.encode(), "GET", f"{PATH}/S1", str(NOW), "n1", b"") == expected


def test_a_correctly_signed_fresh_request_verifies() -> None:
    verify(signed())


def test_an_upper_case_hex_signature_verifies_too() -> None:
    request = signed()
    verify({**request, "signature_hex": request["signature_hex"].upper()})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("method", "PUT"),
        ("path_with_query", PATH + "?dry_run=1"),
        ("nonce", "n-0002"),
        ("body", BODY + b" "),
        ("timestamp", str(NOW + 1)),
    ],
)
def test_a_request_changed_after_signing_is_signature_invalid(field: str, value: object) -> None:
    with pytest.raises(SignatureInvalid):
        verify({**signed(), field: value})


def test_a_request_signed_with_another_secret_is_signature_invalid() -> None:
    with pytest.raises(SignatureInvalid):
        verify(signed(), secret="another-secret")


@pytest.mark.parametrize("signature_hex", ["", "abc", "g" * 64, "é" * 64, None])
def test_a_malformed_signature_is_signature_invalid(signature_hex: object) -> None:
    with pytest.raises(SignatureInvalid):
        verify({**signed(), "signature_hex": signature_hex})


def test_a_nonce_with_a_line_break_is_signature_invalid() -> None:
    with pytest.raises(SignatureInvalid):
        verify({**signed(), "nonce": "n\n1"})
    with pytest.raises(ValueError):
        string_to_sign("POST", PATH, str(NOW), "n\n1", BODY)


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_a_timestamp_within_300_seconds_either_way_is_accepted(skew: int) -> None:
    verify(signed(timestamp=str(NOW + skew)))


@pytest.mark.parametrize("skew", [-301, 301, -86_400])
def test_a_timestamp_outside_300_seconds_is_out_of_window(skew: int) -> None:
    with pytest.raises(TimestampOutOfWindow) as excinfo:
        verify(signed(timestamp=str(NOW + skew)))
    assert excinfo.value.details == {"server_time": NOW}


def test_the_window_can_be_narrowed() -> None:
    with pytest.raises(TimestampOutOfWindow):
        verify_signature(SECRET, now_unix=NOW, window=60, **signed(timestamp=str(NOW - 61)))


@pytest.mark.parametrize("timestamp", ["", "1740792600.5", "-1740792600", "1e9", "١٧٤٠٧٩٢٦٠٠"])
def test_a_timestamp_not_in_whole_seconds_is_out_of_window_once_the_signature_holds(timestamp: str) -> None:
    with pytest.raises(TimestampOutOfWindow):
        verify(signed(timestamp=timestamp))


def test_a_forged_request_is_signature_invalid_even_when_its_timestamp_is_stale() -> None:
    request = signed(timestamp=str(NOW - 10_000))
    with pytest.raises(SignatureInvalid):
        verify({**request, "body": b"{}"})


def test_an_empty_secret_is_a_configuration_error_not_a_client_error() -> None:
    with pytest.raises(ValueError):
        verify(signed(), secret="")
