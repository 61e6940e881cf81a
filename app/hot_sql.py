"""The hot paths' statements on the driver's cursor (issue 13).

A Core statement executed through ``Connection.execute`` pays for SQLAlchemy's execution layer
every time: the statement's cache key (a walk of the whole expression), the compiled-cache look-up,
an ``ExecutionContext`` and a ``CursorResult``. Measured on this project's own statements (session
7, PostgreSQL, one connection, CPU time per execution): the token look-up 148 µs through
``Connection.execute`` against 100 µs on psycopg's cursor, the settlement's voucher read 208 against
113 — SQLAlchemy's own share of a settlement's or a voucher's Python CPU was about a sixth in the
profiles (docs/PERFORMANCE.md).

``HotStatement`` keeps what SQLAlchemy does for such a statement and drops the rest:

* compiled **once per dialect** by SQLAlchemy itself, so the text sent is the text SQLAlchemy would
  send (its bind casts included: psycopg's prepared statements are shared with ordinary executions);
* each parameter goes through its type's **bind processor** and each result column through its
  **result processor** (``UTCDateTime`` and friends behave exactly as under ``Connection.execute``);
* it runs on the cursor of the **same DBAPI connection, inside the caller's transaction**; a
  ``Connection`` whose transaction is not active (failed, or none) goes the ordinary way, which
  raises what SQLAlchemy raises;
* the engine's ``before_cursor_execute`` / ``after_cursor_execute`` listeners see the statement
  (the statement-count tests and the fault tests rely on them) — with no ``ExecutionContext``
  (``context`` is None); ``before_execute`` / ``after_execute`` and ``echo`` logging are not run;
* a driver error goes through ``Connection._handle_dbapi_exception``: the same SQLAlchemy exception
  (``IntegrityError``, ``OperationalError`` …), the same invalidation of a connection that was cut,
  the same ``handle_error`` listeners (the replica's health check).

Rows have the attribute and index access of SQLAlchemy's ``Row`` (named tuples with the same keys:
a statement whose column names are not identifiers, or repeat, is refused rather than renamed);
the result offers the calls the hot paths use (``first``, ``one``, ``one_or_none``, ``all``,
``scalar``, ``scalar_one``, iteration). On any other database (SQLite, the embedded default) a
statement simply runs through ``Connection.execute``. ``tests/integration/test_hot_sql.py`` compares
every hot statement's rows and types with ``Connection.execute``'s, and the error paths.
"""

from __future__ import annotations

import logging
import warnings
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from psycopg.pq import ExecStatus
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.dml import ValuesBase

_TUPLES_OK = ExecStatus.TUPLES_OK
_CACHE_ATTRIBUTE = "_copay_hot_statements"
log = logging.getLogger(__name__)


class HotResult:
    """The rows of one execution, fetched at once (hot statements return a handful)."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one_or_none(self) -> Any:
        if len(self._rows) > 1:
            raise exc.MultipleResultsFound("Multiple rows were found when one or none was required")
        return self.first()

    def one(self) -> Any:
        if not self._rows:
            raise exc.NoResultFound("No row was found when one was required")
        return self.one_or_none()

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]


class _Compiled:
    """One statement compiled for one dialect: its text, fixed values, processors and row shape."""

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        if isinstance(statement, ValuesBase):
            with warnings.catch_warnings():  # compiled with no keys at all, SQLAlchemy warns of the key columns
                warnings.simplefilter("ignore")
                keyless = statement.compile(dialect=dialect, column_keys=[]).string
            if keyless != compiled.string:
                # An INSERT/UPDATE without .values(): its columns would follow each execution's keys.
                raise TypeError("hot INSERT and UPDATE statements name their columns (.values with bindparams)")
        if compiled.positional or compiled.post_compile_params or compiled.literal_execute_params \
                or compiled.escaped_bind_names:
            raise TypeError("hot statements take named parameters, named in the text as in the statement, "
                            "and none rendered at execution")
        self.sql: str = compiled.string
        self.fixed: dict[str, Any] = {}
        processors: dict[str, Callable[[Any], Any]] = {}
        for bind, name in compiled.bind_names.items():
            if bind.expanding or bind.literal_execute:
                raise TypeError(f"hot statements take no expanding or literal parameters ({bind.key})")
            if bind.required and name != bind.key:  # the caller's keys are the names in the text
                raise TypeError(f"hot statements take parameters named as in the text ({bind.key} is {name})")
            if bind.value is not None or not bind.required:
                if callable(bind.callable):
                    raise TypeError(f"hot statements take no callable parameters ({bind.key})")
                self.fixed[name] = bind.effective_value
            # One processor per name, as SQLAlchemy applies them (two binds of one name are one value;
            # an untyped one does not take away a typed one's processor).
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors[name] = processor
        self.bind_processors = list(processors.items())
        self.result_columns = [(column.keyname, column.type) for column in compiled._result_columns]
        self.maker: Callable[[Sequence[Any]], Any] | None = None
        self.width = -1

    def parameters(self, values: Mapping[str, Any]) -> dict[str, Any]:
        parameters = dict(self.fixed)
        parameters.update(values)
        for name, processor in self.bind_processors:
            if name in parameters:
                parameters[name] = processor(parameters[name])
        return parameters

    def row_maker(self, description: Sequence[Any], dialect: Dialect) -> Callable[[Sequence[Any]], Any]:
        """A named tuple with the keys SQLAlchemy's ``Row`` has, filled through the result processors.
        Made at the first execution (the result's types come with it) and kept as ``maker`` for
        results of the same width (``execute`` checks it: reading ``cursor.description`` each time
        cost ≈ 20 µs); made again when the width changes."""
        if len(self.result_columns) == len(description):
            keys = [key for key, _ in self.result_columns]
            processors = [type_.dialect_impl(dialect).result_processor(dialect, column.type_code)
                          for (_, type_), column in zip(self.result_columns, description, strict=True)]
        else:  # a text() statement: untyped, named by the database
            keys = [column.name for column in description]
            processors = [None] * len(description)
        try:
            row = namedtuple("Row", keys)  # type: ignore[misc]
        except ValueError as refused:  # a key that is not an identifier, or twice: Row would differ
            raise TypeError(f"hot statements name their columns as identifiers, once each: {keys}") from refused
        make = row._make
        if not any(processors):
            maker = make
        else:
            pairs = list(enumerate(processors))

            def maker(values: Sequence[Any]) -> Any:
                return make([values[i] if p is None else p(values[i]) for i, p in pairs])
        self.width, self.maker = len(keys), maker
        return maker


class HotStatement:
    """A Core statement the hot paths run many times a second; ``execute`` as ``Connection.execute``."""

    __slots__ = ("statement",)

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement

    def compiled(self, dialect: Dialect) -> _Compiled:
        """The statement compiled for this dialect, kept on the dialect (an engine's): it goes with
        its engine (a weak-keyed cache would not let go — the processors refer to the dialect)."""
        cache = dialect.__dict__.get(_CACHE_ATTRIBUTE)
        if cache is None:
            cache = dialect.__dict__.setdefault(_CACHE_ATTRIBUTE, {})
        compiled = cache.get(self)
        if compiled is None:
            compiled = cache[self] = _Compiled(self.statement, dialect)
        return compiled

    def execute(self, connection: Connection, values: Mapping[str, Any] | None = None) -> Any:
        dialect = connection.dialect
        transaction, nested = connection.get_transaction(), connection.get_nested_transaction()
        if dialect.driver != "psycopg" or transaction is None or not transaction.is_active \
                or (nested is not None and not nested.is_active) or connection.invalidated:
            return connection.execute(self.statement, values or {})  # which raises what it raises
        compiled = self.compiled(dialect)
        sql, parameters, cursor = compiled.sql, values or {}, None
        try:
            parameters = compiled.parameters(parameters)  # a type's refusal is a StatementError, as there
            cursor = connection.connection.cursor()
            listeners = connection.dispatch
            for listener in listeners.before_cursor_execute:
                sql, parameters = listener(connection, cursor, sql, parameters, None, False)
            cursor.execute(sql, parameters)
            listeners.after_cursor_execute(connection, cursor, sql, parameters, None, False)
            result = cursor.pgresult
            if result is None or result.status != _TUPLES_OK:
                rows: list[Any] = []
            else:
                make = compiled.maker if result.nfields == compiled.width else None
                make = make or compiled.row_maker(cursor.description, dialect)  # first time, or a new shape
                rows = list(map(make, cursor.fetchall()))
            cursor.close()
        except BaseException as error:  # noqa: BLE001 — as SQLAlchemy: the handler re-raises what it is given
            connection._handle_dbapi_exception(error, sql, parameters, cursor, None)
        return HotResult(rows)


_STATEMENTS: dict[int, HotStatement] = {}
_MAX_STATEMENTS = 256  # the hot paths name a few dozen module-level statements; anything past this is a misuse
_warned: list[bool] = []


def execute(connection: Connection, statement: ClauseElement, values: Mapping[str, Any] | None = None) -> Any:
    """``connection.execute(statement, values)`` for a statement built once at import (a module
    constant: it is remembered by identity, with the statement kept alive alongside)."""
    hot = _STATEMENTS.get(id(statement))
    if hot is None:
        if len(_STATEMENTS) >= _MAX_STATEMENTS:
            if not _warned:
                _warned.append(True)
                log.warning("hot_sql: more than %d statements; a statement built per call? The rest run "
                            "through Connection.execute", _MAX_STATEMENTS)
            return connection.execute(statement, values or {})
        hot = _STATEMENTS.setdefault(id(statement), HotStatement(statement))
    return hot.execute(connection, values)
