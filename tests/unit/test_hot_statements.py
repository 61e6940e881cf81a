"""The hot paths' PostgreSQL statements stay small enough for psycopg to cache their parsing: a
statement over ``MAX_CACHED_STATEMENT_LENGTH`` characters (or with more parameters than
``MAX_CACHED_STATEMENT_PARAMS``) is split and converted again on every execution — measured at
~0.3 ms of CPU per settlement for the write statement before its whitespace was squeezed."""

from __future__ import annotations

import pytest
from psycopg import _queries
from sqlalchemy.dialects import postgresql

from app import hot_sql
from app.services import auth, identity, settlements, vouchers

HOT = {
    "settlement: voucher (no lock)": settlements._VOUCHER_WITH_FACTS[0],
    "settlement: voucher (locked)": settlements._VOUCHER_WITH_FACTS[1],
    "settlement: card": settlements._CARD_WITH_FACTS,
    "settlement: bindings": settlements._BINDINGS_SHARED,
    "settlement: cap row": settlements._CAP_LOCK["postgresql"],
    "settlement: accounts": settlements._LOCK_ACCOUNTS_WITH_USAGE,
    "settlement: the write": settlements._WRITE_ALL,
    "settlement: replay": settlements._REPLAY,
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
def test_a_hot_statement_fits_psycopgs_parse_cache(name):
    compiled = HOT[name].compile(dialect=postgresql.psycopg.dialect())
    assert len(str(compiled)) <= _queries.MAX_CACHED_STATEMENT_LENGTH, name
    assert len(compiled.params) <= _queries.MAX_CACHED_STATEMENT_PARAMS, name


@pytest.mark.parametrize("name", sorted(HOT))
def test_a_hot_statement_has_one_text(name):
    """No expanding ``IN`` list: SQLAlchemy re-renders such a statement at every execution, and its
    text (so psycopg's prepared statement) changes with the number of values — arrays instead."""
    assert "POSTCOMPILE" not in str(HOT[name].compile(dialect=postgresql.psycopg.dialect())), name


def test_squeezing_keeps_the_statement():
    sql = "SELECT a,\n       b -- the second\n  FROM t\n\n WHERE x = 'y'\n"
    assert settlements._squeezed(sql) == "SELECT a, b FROM t WHERE x = 'y'"


@pytest.mark.parametrize("name", sorted(HOT))
def test_a_hot_statement_can_run_on_the_cursor(name):
    """``app.hot_sql`` refuses, when it first compiles a statement, what it cannot run as SQLAlchemy
    would (parameters rendered at execution, renamed in the text, positional): found here, not at
    the first request in production."""
    compiled = hot_sql._Compiled(HOT[name], postgresql.psycopg.dialect())
    assert compiled.sql == str(HOT[name].compile(dialect=postgresql.psycopg.dialect())), name
