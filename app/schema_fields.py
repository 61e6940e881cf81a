"""Bounded integer fields for request schemas.

Every integer a client sends is bounded at the schema, so nothing out of range ever reaches the
database driver (PostgreSQL's bigint ends at 2^63 − 1: one more is a driver error, i.e. a 500):
ids are 1 … 2^63 − 1, amounts of money 0 … ``MAX_FEN``. The bounds are in the OpenAPI document
(``minimum``/``maximum``), and a test walks the document to check that every integer a client can
send has them (tests/api/test_openapi_contract.py).
"""

from __future__ import annotations

from typing import Any

from marshmallow import fields, validate

MAX_ID = 2**63 - 1
MAX_FEN = 10**10  # 100 million yuan: far above any outpatient bill, far below bigint even summed


def Id(**kwargs: Any) -> fields.Integer:  # noqa: N802 — used like a field class
    """An id: an integer 1 … 2^63 − 1 (out of range is VALIDATION_ERROR, never a driver error)."""
    return fields.Integer(validate=validate.Range(min=1, max=MAX_ID), **kwargs)


def Fen(minimum: int = 0, **kwargs: Any) -> fields.Integer:  # noqa: N802
    """An amount of money in fen, ``minimum`` … ``MAX_FEN``."""
    return fields.Integer(validate=validate.Range(min=minimum, max=MAX_FEN), **kwargs)
