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


def test_an_insert_whose_columns_follow_the_execution_keys_is_refused():
    """``insert(table)`` without ``.values()`` takes its columns from each execution's keys; compiled
    once it would name every column of the table (a new column: "query parameter missing")."""
    from sqlalchemy import insert

    with pytest.raises(TypeError):
        hot_sql._Compiled(insert(settlements.cap_usage_t), postgresql.psycopg.dialect())


def test_an_untyped_bind_does_not_take_a_typed_binds_processor_of_the_same_name():
    from datetime import datetime

    from sqlalchemy import bindparam, literal_column, select

    from models.base import UTCDateTime

    statement = select(literal_column("1").label("one")).where(
        bindparam("t", type_=UTCDateTime()) == literal_column("now()"), bindparam("t") != literal_column("now()"))
    compiled = hot_sql._Compiled(statement, postgresql.psycopg.dialect())
    with pytest.raises(ValueError):  # UTCDateTime refuses a naive time, as under Connection.execute
        compiled.parameters({"t": datetime(2026, 1, 1)})
