"""The signed-in user's hot statements (sign-in, token look-up, ``GET /me``, voucher issue) stay small
enough for psycopg to cache their parsing: a longer statement, or one with more parameters, is
converted again on every execution."""

from __future__ import annotations

import pytest
from psycopg import _queries
from sqlalchemy.dialects import postgresql

from app.services import auth, identity, vouchers

HOT = {
    "sign-in (WeChat)": auth._WECHAT.all_in_one,
    "sign-in (Alipay user id)": auth._ALIPAY_BY_USER_ID.all_in_one,
    "sign-in (Alipay open id)": auth._ALIPAY_BY_OPEN_ID.all_in_one,
    "user token look-up": auth._USER_BY_TOKEN,
    "staff token look-up": auth._STAFF_BY_TOKEN,
    "GET /me": identity.ME_BY_TOKEN,
    "voucher facts": vouchers._FACTS,
    "voucher and audit row": vouchers._INSERT_WITH_AUDIT,
}


@pytest.mark.parametrize("name", sorted(HOT))
def test_a_user_hot_statement_fits_psycopgs_parse_cache(name):
    compiled = HOT[name].compile(dialect=postgresql.psycopg.dialect())
    assert len(str(compiled)) <= _queries.MAX_CACHED_STATEMENT_LENGTH, name
    assert len(compiled.params) <= _queries.MAX_CACHED_STATEMENT_PARAMS, name
