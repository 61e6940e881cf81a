"""Bounded integer fields for request schemas.

Every integer a client sends is bounded at the schema, so nothing out of range ever reaches the
database driver (PostgreSQL's bigint ends at 2^63 − 1: one more is a driver error, i.e. a 500):
ids are 1 … 2^63 − 1, amounts of money 0 … ``MAX_FEN``. The bounds are in the OpenAPI document
(``minimum``/``maximum``), and a test walks the document to check that every integer a client can
send has them (tests/api/test_openapi_contract.py).
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import fields, validate

MAX_ID = 2**63 - 1
MAX_FEN = 10**10  # 100 million yuan: far above any outpatient bill, far below bigint even summed


_ASCII_INTEGER = re.compile(r"-?[0-9]+")


class Integer(fields.Integer):
    """An integer that, sent as text (a query parameter), is ASCII digits only.

    ``int()`` also takes "１０", "٥", "1_0" and " 10 "; so would marshmallow's Integer. The document
    says integer, and a path id is ASCII digits (Werkzeug's converter), so a query is too.
    """

    def _validated(self, value: Any) -> int:
        if isinstance(value, str) and not _ASCII_INTEGER.fullmatch(value):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


def Id(**kwargs: Any) -> fields.Integer:  # noqa: N802 — used like a field class
    """An id: an integer 1 … 2^63 − 1 (out of range is VALIDATION_ERROR, never a driver error)."""
    return Integer(validate=validate.Range(min=1, max=MAX_ID), **kwargs)


def Fen(minimum: int = 0, **kwargs: Any) -> fields.Integer:  # noqa: N802
    """An amount of money in fen, ``minimum`` … ``MAX_FEN``."""
    return Integer(validate=validate.Range(min=minimum, max=MAX_FEN), **kwargs)
