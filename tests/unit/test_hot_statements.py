"""The settlement's PostgreSQL statements stay small enough for psycopg to cache their parsing:
a statement over ``MAX_CACHED_STATEMENT_LENGTH`` characters (or with more parameters than
``MAX_CACHED_STATEMENT_PARAMS``) is split and converted again on every execution — measured at
~0.3 ms of CPU per settlement for the write statement before its whitespace was squeezed."""

from __future__ import annotations

import pytest
from psycopg import _queries
from sqlalchemy.dialects import postgresql

from app.services import settlements


@pytest.mark.parametrize("name", ["_VOUCHER_WITH_FACTS", "_CARD_WITH_FACTS", "_BINDINGS_SHARED",
                                  "_LOCK_ACCOUNTS_WITH_USAGE", "_WRITE_ALL", "_REPLAY"])
def test_a_hot_statement_fits_psycopgs_parse_cache(name):
    statement = getattr(settlements, name)
    for one in statement if isinstance(statement, tuple) else (statement,):
        compiled = one.compile(dialect=postgresql.psycopg.dialect())
        assert len(str(compiled)) <= _queries.MAX_CACHED_STATEMENT_LENGTH, name
        assert len(compiled.params) <= _queries.MAX_CACHED_STATEMENT_PARAMS, name


def test_squeezing_keeps_the_statement():
    sql = "SELECT a,\n       b -- the second\n  FROM t\n\n WHERE x = 'y'\n"
    assert settlements._squeezed(sql) == "SELECT a, b FROM t WHERE x = 'y'"
