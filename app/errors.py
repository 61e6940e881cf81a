"""Domain errors and their one mapping to the SPEC §5 error envelope.

Services and pure rules raise these; nothing below the blueprints knows about HTTP,
but each error carries the status the API contract gives it, so the mapping to the
envelope ``{"error": {"code", "message", "details"}}`` happens in exactly one handler.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A failure a client can act on: stable machine code, HTTP status, safe message."""

    code = "VALIDATION_ERROR"
    status = 400
    message = "The request is not valid."

    def __init__(self, message: str | None = None, *, details: dict[str, Any] | None = None,
                 params: dict[str, Any] | None = None):
        # ``template`` is the catalogue key (app/i18n.py translates it); ``params`` fill its
        # ``{name}`` fields, so a message with values in it still has one translatable text.
        self.template = message or self.message
        self.params = params or {}
        rendered = self.template.format(**self.params) if self.params else self.template
        super().__init__(rendered)
        self.message = rendered
        self.details = details or {}

    def to_envelope(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def _error(name: str, code: str, status: int, message: str) -> type[DomainError]:
    return type(name, (DomainError,), {"code": code, "status": status, "message": message})


# Generic
ValidationFailed = _error("ValidationFailed", "VALIDATION_ERROR", 400, "The request is not valid.")
Unauthenticated = _error("Unauthenticated", "UNAUTHENTICATED", 401, "Authentication is required.")
Forbidden = _error("Forbidden", "FORBIDDEN", 403, "You may not do this.")
NotFound = _error("NotFound", "NOT_FOUND", 404, "Not found.")
InvalidState = _error("InvalidState", "INVALID_STATE", 409, "Not allowed in the current state.")
IdempotencyConflict = _error(
    "IdempotencyConflict", "IDEMPOTENCY_CONFLICT", 409,
    "The same request number was used with a different body.",
)
PayloadTooLarge = _error("PayloadTooLarge", "PAYLOAD_TOO_LARGE", 413, "The request body is too large.")
UnsupportedMediaType = _error(
    "UnsupportedMediaType", "UNSUPPORTED_MEDIA_TYPE", 415, "This file type is not accepted."
)
RateLimited = _error("RateLimited", "RATE_LIMITED", 429, "Too many requests; try again later.")
UpstreamUnavailable = _error(
    "UpstreamUnavailable", "UPSTREAM_UNAVAILABLE", 503, "The platform is not reachable; try again later."
)


def limit_cannot_count() -> DomainError:
    """The 503 of a limit whose shared storage (Redis) failed, where the limit fails closed — the
    checks of ID numbers and card numbers (R19): one that stopped counting would let numbers be
    tested at full speed."""
    return UpstreamUnavailable("This check cannot be counted right now; try again shortly.",
                               details={"unavailable": "rate_limiter", "retry_after": 5})

LoginCodeInvalid = _error("LoginCodeInvalid", "LOGIN_CODE_INVALID", 401, "The login code is invalid or used.")

# Rule violations (422)
IdNumberInvalid = _error("IdNumberInvalid", "ID_NUMBER_INVALID", 422, "The ID number is not valid.")
IdentityMismatch = _error(
    "IdentityMismatch", "IDENTITY_MISMATCH", 422, "Name and ID number do not match the registry."
)
OwnerNotEligible = _error(
    "OwnerNotEligible", "OWNER_NOT_ELIGIBLE", 422,
    "Only active employee-insured persons with a personal account in this province can share it.",
)
BeneficiaryMismatch = _error(
    "BeneficiaryMismatch", "BENEFICIARY_MISMATCH", 422,
    "The family member's name, ID number and social-security card number do not match the registry.",
)
BeneficiaryNotEligible = _error(
    "BeneficiaryNotEligible", "BENEFICIARY_NOT_ELIGIBLE", 422,
    "The family member is not an active insured person within this region's scope.",
)
SelfBinding = _error("SelfBinding", "SELF_BINDING", 422, "You cannot bind yourself.")
AlreadyBound = _error("AlreadyBound", "ALREADY_BOUND", 422, "This family member is already bound to you.")
TooManyBindings = _error(
    "TooManyBindings", "TOO_MANY_BINDINGS", 422, "You have reached the most family members allowed."
)
RelationshipNotAllowed = _error(
    "RelationshipNotAllowed", "RELATIONSHIP_NOT_ALLOWED", 422, "This relationship is not allowed in this region."
)
ProofRequired = _error("ProofRequired", "PROOF_REQUIRED", 422, "A proof of the relationship is required.")
PledgeInvalid = _error("PledgeInvalid", "PLEDGE_INVALID", 422, "The pledge must be the current version, agreed.")
BindingNotActive = _error("BindingNotActive", "BINDING_NOT_ACTIVE", 422, "The binding is not active.")
VoucherInvalid = _error("VoucherInvalid", "VOUCHER_INVALID", 422, "The e-voucher is not valid.")
VoucherExpired = _error("VoucherExpired", "VOUCHER_EXPIRED", 422, "The e-voucher has expired.")
VoucherUsed = _error("VoucherUsed", "VOUCHER_USED", 422, "The e-voucher has already been used.")
RefundExceedsPaid = _error(
    "RefundExceedsPaid", "REFUND_EXCEEDS_PAID", 422, "The refund is more than what is left to refund."
)
LimitAboveCap = _error("LimitAboveCap", "LIMIT_ABOVE_CAP", 422, "The limit is above the region's annual cap.")
ServiceTimeOutOfRange = _error(
    "ServiceTimeOutOfRange", "SERVICE_TIME_OUT_OF_RANGE", 422,
    "The service time is outside the window in which it can be settled.",
)
IdentityNotProven = _error(
    "IdentityNotProven", "IDENTITY_NOT_PROVEN", 422,
    "A proof of identity is required: a platform real-name check, a proven phone number or the service window.",
)
PhoneNotVerified = _error(
    "PhoneNotVerified", "PHONE_NOT_VERIFIED", 422,
    "Prove your phone number first; to change the reserved number, visit the service window.",
)
PhoneMismatch = _error(
    "PhoneMismatch", "PHONE_MISMATCH", 422,
    "Your phone number does not match the number reserved in the registry; update it at the service window.",
)
CardInvalid = _error("CardInvalid", "CARD_INVALID", 422, "The social-security card is not valid.")
InstitutionNotDesignated = _error(
    "InstitutionNotDesignated", "INSTITUTION_NOT_DESIGNATED", 403, "The institution is not designated or not active."
)

# Institution request signing (401)
SignatureInvalid = _error("SignatureInvalid", "SIGNATURE_INVALID", 401, "The request signature is not valid.")
TimestampOutOfWindow = _error(
    "TimestampOutOfWindow", "TIMESTAMP_OUT_OF_WINDOW", 401, "The request timestamp is outside the allowed window."
)
NonceReused = _error("NonceReused", "NONCE_REUSED", 401, "The request nonce was already used.")

# Issue 12: the service-window console's sign-in (the same codes as the API's: 401 and 429).
SignInFailed = _error(
    "SignInFailed", "UNAUTHENTICATED", 401, "The username, password or one-time code is wrong.",
)
SignInLocked = _error(
    "SignInLocked", "RATE_LIMITED", 429, "Too many failed sign-ins; wait before trying again.",
)
SessionExpired = _error("SessionExpired", "UNAUTHENTICATED", 401, "The console session has ended; sign in again.")
