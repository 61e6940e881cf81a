"""Settle, read and refund (SPEC §5, R6–R14). Every request is signed by the institution:
``X-Inst-Code``, ``X-Timestamp``, ``X-Nonce``, ``X-Signature`` (see ``app.institution_auth``)."""

from __future__ import annotations

from typing import Any

from flask import g, jsonify, make_response, request
from marshmallow import ValidationError, fields, validate, validates_schema

from app.envelope import Blueprint
from app.institution_auth import institution, institution_signed
from app.schema_fields import Fen
from app.services import refunds, settlements
from app.services.settlements import Outcome, SettlementRequest, request_hash
from app.web import domain, now, session
from miniprogram_api.schemas import MaskedPersonSchema, StrictSchema

bp = Blueprint("institution_settlements", __name__,
               description="Designated institutions: HMAC-signed settlement, look-up and refund")

_REQUEST_NO = validate.Regexp(r"^[A-Za-z0-9_\-]{1,64}$", error="1 to 64 letters, digits, _ or -")


class StrictBoolean(fields.Boolean):
    """Only JSON true or false: ``"yes"`` or ``1`` for a catalogue flag is a malformed request."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Must be true or false.")
        return value


class ItemSchema(StrictSchema):
    code = fields.String(required=True, validate=validate.Length(min=1, max=64))
    name = fields.String(required=True, validate=validate.Length(max=200))
    category = fields.String(required=True, validate=validate.Length(min=1, max=32),
                             metadata={"description": "drug, consultation, examination, treatment, tcm_treatment, "
                                                      "medical_consumable (eligible, R9); anything else is cash"})
    in_catalogue = StrictBoolean(required=True)
    amount_fen = Fen(required=True, strict=True,
                                metadata={"description": "personal-burden part after the pooled fund, in fen"})


class CardSchema(StrictSchema):
    social_card_no = fields.String(required=True, validate=validate.Length(min=1, max=32),
                                   metadata={"description": "read from the social-security card (社保卡)"})
    id_number = fields.String(required=True, validate=validate.Length(min=1, max=32),
                              metadata={"description": "the card holder's ID number, read from the card"})


class SettlementRequestSchema(StrictSchema):
    out_settlement_no = fields.String(required=True, validate=_REQUEST_NO)
    voucher_code = fields.String(validate=validate.Length(min=1, max=64), metadata={
        "description": "the scanned e-voucher; exactly one of voucher_code and card"})
    card = fields.Nested(CardSchema, metadata={
        "description": "R12: settle with the social-security card (the reader checked card and PIN) instead of a "
                       "voucher; the card names its holder. 422 CARD_INVALID when it matches no active registry "
                       "person (no hint which field); failed look-ups per institution are limited (429)"})
    service_time = fields.AwareDateTime(format="iso", metadata={"description": "ISO 8601 with offset; default now"})
    items = fields.List(fields.Nested(ItemSchema), required=True, validate=validate.Length(min=1, max=500))
    dry_run = StrictBoolean(load_default=False)

    @validates_schema
    def _one_patient(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("voucher_code" in data) == ("card" in data):
            raise ValidationError("Give exactly one of voucher_code and card.", "voucher_code")


class PaymentSchema(StrictSchema):
    payer = fields.Nested(MaskedPersonSchema)
    kind = fields.String(metadata={"description": "own | copay"})
    amount_fen = fields.Integer()


class SettlementSchema(StrictSchema):
    settlement_no = fields.String(allow_none=True)
    out_settlement_no = fields.String()
    status = fields.String(metadata={"description": "settled | partially_refunded | refunded | dry_run"})
    total_fen = fields.Integer()
    eligible_fen = fields.Integer()
    own_account_fen = fields.Integer()
    copay_fen = fields.Integer()
    cash_fen = fields.Integer()
    payments = fields.List(fields.Nested(PaymentSchema))
    beneficiary = fields.Nested(MaskedPersonSchema)
    reasons = fields.List(fields.Dict(), metadata={"description": "why each fen not paid by an account is cash"})
    year = fields.Integer()
    cap_fen = fields.Integer(allow_none=True)
    cap_used_fen = fields.Integer()
    service_time = fields.String()
    settled_at = fields.String(allow_none=True)
    auth_method = fields.String(metadata={"description": "how the patient was identified: voucher | card (R12)"})
    refunded_fen = fields.Integer(metadata={"description": "GET only"})
    refundable_fen = fields.Integer(metadata={"description": "GET only"})
    refunds = fields.List(fields.Dict(), metadata={"description": "GET only: refund_no, out_refund_no, amount_fen, "
                                                                  "created_at"})


class RefundRequestSchema(StrictSchema):
    out_refund_no = fields.String(required=True, validate=_REQUEST_NO)
    amount_fen = Fen(1, required=True, strict=True)


class RefundSchema(StrictSchema):
    refund_no = fields.String()
    out_refund_no = fields.String()
    settlement_no = fields.String()
    amount_fen = fields.Integer()
    credits = fields.List(fields.Nested(PaymentSchema))
    cash_fen = fields.Integer()
    cap_restored_fen = fields.Integer()
    status = fields.String()
    settlement_status = fields.String()
    refunded_fen = fields.Integer()
    refundable_fen = fields.Integer()
    created_at = fields.String()


def _sent(outcome: Outcome) -> Any:
    # The body is sent as stored, so a replay (R13) repeats the original response.
    g.money_outcome = outcome  # counted by app/metrics.py
    return make_response(jsonify(outcome.body), outcome.status)


@bp.post("/settlements")
@institution_signed
@bp.arguments(SettlementRequestSchema)
@bp.response(201, SettlementSchema)
@bp.alt_response(200, schema=SettlementSchema, description="dry_run: computed only, nothing written")
def create_settlement(body):
    """Settle a bill against a scanned e-voucher or the patient's social-security card (``dry_run``:
    compute only)."""
    wanted = SettlementRequest.from_body(body, request.get_json())
    d = domain()
    return _sent(settlements.settle(session(), d.money, institution(), wanted, now(), card_guard=d.card_guard))


@bp.get("/settlements/<settlement_no>")
@institution_signed
@bp.response(200, SettlementSchema)
def get_settlement(settlement_no):
    """A settlement made by this institution, as it stands now (with its refunds)."""
    return settlements.get_settlement(session(), institution(), settlement_no)


@bp.post("/settlements/<settlement_no>/refunds")
@institution_signed
@bp.arguments(RefundRequestSchema)
@bp.response(201, RefundSchema)
def refund(body, settlement_no):
    """Refund part or all of a settlement, to the payers in reverse payment order (R14)."""
    fingerprint = request_hash({"settlement_no": settlement_no, "body": request.get_json()})
    return _sent(refunds.refund_settlement(session(), domain().money, institution(), settlement_no,
                                           body["out_refund_no"], body["amount_fen"], fingerprint, now()))
