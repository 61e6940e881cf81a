"""The hot statements on psycopg's cursor (``app.hot_sql``, issue 13) behave as ``Connection.execute``:
the same rows with the same keys and Python values (time zones included), the same SQLAlchemy
exceptions, the same invalidation of a cut connection and the same engine events."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, event, exc, select, text
from sqlalchemy.sql.dml import UpdateBase

from app import hot_sql
from app.services import auth, identity, settlements, vouchers
from models import Person
from tests.api.test_card_settlements import CARDS, settle_by_card
from tests.api.test_settlements import created, family  # noqa: F401 — the fixture
from tests.helpers import bearer
from tests.money_helpers import CHILD, drug, issue, settle

pytestmark = pytest.mark.postgres("the hot path is PostgreSQL's (psycopg's cursor); SQLite runs Connection.execute")


def _plain(rows):
    return [(tuple(row._fields), tuple(row), tuple(type(v) for v in row),
             tuple(getattr(v, "tzinfo", None) for v in row)) for row in rows]


@pytest.fixture
def shadowed(monkeypatch):
    """Every read a hot statement makes is made again through ``Connection.execute`` in the same
    transaction and compared; returns the statements seen (writes are compared by
    test_settlement_writes_alike, which checks every row the one-statement write leaves)."""
    seen = []
    hot_execute = hot_sql.HotStatement.execute

    def execute(self, connection, values=None):
        result = hot_execute(self, connection, values)
        seen.append(self.statement)
        if not isinstance(self.statement, UpdateBase) and "INSERT" not in str(self.statement):
            expected = connection.execute(self.statement, values or {}).all()
            assert _plain(result.all()) == _plain(expected), self.statement
        return result

    monkeypatch.setattr(hot_sql.HotStatement, "execute", execute)
    return seen


def test_every_hot_read_gives_what_connection_execute_gives(app, client, family, demo, shadowed):  # noqa: F811
    code = issue(client, family.owner_token, family.child)  # the token look-up, the voucher's facts
    first = created(settle(client, code, [drug(10_000)], out_no="OUT-HOT"))  # voucher … the write
    assert created(settle(client, code, [drug(10_000)], out_no="OUT-HOT")) == first  # the replay's read
    created(settle_by_card(client, CARDS[CHILD], CHILD, [drug(2_000)]))  # the card's row
    assert client.get("/api/v1/me", headers=bearer(family.owner_token)).status_code == 200  # ME_BY_TOKEN
    staff = client.get("/api/v1/staff/bindings", headers=bearer(demo.tokens["window1"]))
    assert staff.status_code == 200, staff.get_json()
    wanted = {auth._USER_BY_TOKEN, auth._STAFF_BY_TOKEN, identity.ME_BY_TOKEN, vouchers._FACTS,
              vouchers._INSERT_WITH_AUDIT, settlements._VOUCHER_WITH_FACTS[1], settlements._CARD_WITH_FACTS,
              settlements._BINDINGS_SHARED, settlements._CAP_LOCK["postgresql"],
              settlements._LOCK_ACCOUNTS_WITH_USAGE, settlements._WRITE_ALL, settlements._REPLAY}
    missing = [str(s)[:80] for s in wanted if not any(s is seen_ for seen_ in shadowed)]
    assert not missing, missing


def test_rows_carry_the_types_sqlalchemy_gives(app, demo):
    engine = app.extensions["db.engine"]
    statement = select(Person.id, Person.created_at, Person.name_enc).order_by(Person.id).limit(3)
    with engine.connect() as connection, connection.begin():
        hot = hot_sql.execute(connection, statement).all()
        plain = connection.execute(statement).all()
    assert hot and _plain(hot) == _plain(plain)
    assert hot[0].created_at.tzinfo is not None and hot[0].created_at.utcoffset().total_seconds() == 0
    assert hot[0][0] == hot[0].id == plain[0].id


def test_a_constraint_violation_is_sqlalchemys_integrity_error_and_the_transaction_can_roll_back(app, demo):
    engine = app.extensions["db.engine"]
    duplicate = text("INSERT INTO persons (id, id_number_bidx) SELECT id, id_number_bidx FROM persons LIMIT 1")
    with engine.connect() as connection:
        connection.begin()
        with pytest.raises(exc.IntegrityError) as raised:
            hot_sql.HotStatement(duplicate).execute(connection, {})
        assert raised.value.statement.startswith("INSERT INTO persons")
        connection.rollback()
        with connection.begin():
            assert hot_sql.HotStatement(text("SELECT 1 AS one")).execute(connection).scalar_one() == 1


def test_a_cut_connection_is_invalidated_and_reported_as_sqlalchemy_reports_it(app, demo):
    engine = app.extensions["db.engine"]
    admin = create_engine(app.config["DATABASE_URL"], isolation_level="AUTOCOMMIT")
    errors = []
    event.listen(engine, "handle_error", lambda context: errors.append(context.is_disconnect))
    try:
        with engine.connect() as connection:
            connection.begin()
            pid = connection.connection.dbapi_connection.info.backend_pid
            with admin.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with pytest.raises(exc.OperationalError) as raised:
                hot_sql.HotStatement(text("SELECT 1 AS one")).execute(connection)
            assert raised.value.connection_invalidated
            assert connection.invalidated
        assert errors == [True]
        with engine.connect() as connection, connection.begin():  # the pool hands out a live one
            assert hot_sql.execute(connection, text("SELECT 2 AS two")).scalar_one() == 2
    finally:
        admin.dispose()


def test_the_engine_listeners_see_each_hot_statement(app):
    engine = app.extensions["db.engine"]
    statement = text("SELECT :x AS x")
    sent = []

    def record(_conn, _cursor, sql, parameters, *_args):
        sent.append((sql, dict(parameters)))

    event.listen(engine, "before_cursor_execute", record)
    try:
        with engine.connect() as connection, connection.begin():
            assert hot_sql.HotStatement(statement).execute(connection, {"x": 7}).one().x == 7
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert sent == [("SELECT %(x)s AS x", {"x": 7})]


def test_without_an_active_transaction_it_is_connection_execute(app):
    engine = app.extensions["db.engine"]
    with engine.connect() as connection:  # no begin(): Connection.execute autobegins, as ever
        result = hot_sql.HotStatement(text("SELECT 3 AS three")).execute(connection)
        assert not isinstance(result, hot_sql.HotResult) and result.scalar_one() == 3


def test_results_answer_like_sqlalchemys(app):
    engine = app.extensions["db.engine"]
    two = hot_sql.HotStatement(text("SELECT x FROM (VALUES (1), (2)) AS v(x) ORDER BY x"))
    none = hot_sql.HotStatement(text("SELECT 1 AS x WHERE false"))
    with engine.connect() as connection, connection.begin():
        assert [r.x for r in two.execute(connection)] == [1, 2]
        assert two.execute(connection).first().x == 1 and two.execute(connection).scalar() == 1
        with pytest.raises(exc.MultipleResultsFound):
            two.execute(connection).one()
        with pytest.raises(exc.NoResultFound):
            none.execute(connection).one()
        assert none.execute(connection).first() is None and none.execute(connection).scalar() is None
        assert none.execute(connection).one_or_none() is None
        pairs = hot_sql.HotStatement(text("SELECT 1 AS k, 'a' AS v UNION ALL SELECT 2, 'b' ORDER BY k"))
        assert dict(pairs.execute(connection).all()) == {1: "a", 2: "b"}  # as lock_accounts reads them


def test_statements_it_cannot_run_as_they_are_are_refused_when_first_compiled(app):
    from sqlalchemy import bindparam
    engine = app.extensions["db.engine"]
    expanding = select(Person.id).where(Person.id.in_(bindparam("ids", expanding=True)))
    with engine.connect() as connection, connection.begin(), pytest.raises(TypeError):
        hot_sql.HotStatement(expanding).execute(connection, {"ids": [1]})


def test_a_moment_goes_through_the_bind_processor(app, demo):
    """``UTCDateTime`` refuses a naive time under Connection.execute; the hot path must too."""
    engine = app.extensions["db.engine"]
    with engine.connect() as connection, connection.begin():
        with pytest.raises(exc.StatementError):
            connection.execute(auth._USER_BY_TOKEN, {"token_hash": "x", "now": datetime(2026, 1, 1)})
    with engine.connect() as connection, connection.begin():
        with pytest.raises(exc.StatementError):
            hot_sql.execute(connection, auth._USER_BY_TOKEN, {"token_hash": "x", "now": datetime(2026, 1, 1)})
        assert hot_sql.execute(connection, auth._USER_BY_TOKEN,
                               {"token_hash": "x", "now": datetime.now(UTC)}).first() is None


def test_a_parameter_named_otherwise_in_the_text_is_refused_when_first_compiled(app):
    from sqlalchemy import bindparam
    engine = app.extensions["db.engine"]
    escaped = select(Person.id).where(Person.id == bindparam("the id%"))  # SQLAlchemy renames it in the text
    with engine.connect() as connection, connection.begin(), pytest.raises(TypeError):
        hot_sql.HotStatement(escaped).execute(connection, {"the id%": 1})


def test_the_text_sent_is_the_text_sqlalchemy_sends(app, demo):
    """The same text, so the same server-side prepared statement: captured from both ways of running
    each hot read."""
    engine = app.extensions["db.engine"]
    sent = []

    def record(_conn, _cursor, sql, *_args):
        sent.append(sql)

    values = {"token_hash": "x", "now": datetime.now(UTC), "code_hash": "y", "service_time": datetime.now(UTC),
              "on": datetime.now(UTC).date(), "beneficiary_id": 1, "target_id": 1, "holder_id": 1}
    event.listen(engine, "before_cursor_execute", record)
    try:
        for statement in (auth._USER_BY_TOKEN, auth._STAFF_BY_TOKEN, identity.ME_BY_TOKEN, vouchers._FACTS,
                          settlements._VOUCHER_WITH_FACTS[1], settlements._BINDINGS_SHARED):
            with engine.connect() as connection, connection.begin():
                hot_sql.execute(connection, statement, values).all()
                connection.execute(statement, values).all()
            assert sent[-2] == sent[-1], statement
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_two_binds_of_one_name_are_processed_once(app):
    """SQLAlchemy applies one bind processor per name; two binds of one name must not be processed twice."""
    from sqlalchemy import bindparam, literal_column
    from sqlalchemy.dialects.postgresql import JSONB
    engine = app.extensions["db.engine"]
    one = bindparam("x", type_=JSONB)
    again = bindparam("x", type_=JSONB)
    statement = select(literal_column("1").label("one")).where(one == again)
    with engine.connect() as connection, connection.begin():
        assert hot_sql.HotStatement(statement).execute(connection, {"x": {"a": 1}}).one().one == 1


def test_a_new_row_shape_gets_a_new_row(app):
    engine = app.extensions["db.engine"]
    with engine.connect() as connection, connection.begin():
        connection.execute(text("CREATE TEMPORARY TABLE shape (a int) ON COMMIT DROP"))
        connection.execute(text("INSERT INTO shape VALUES (1)"))
        everything = hot_sql.HotStatement(text("SELECT * FROM shape"))
        assert everything.execute(connection).one() == (1,)
        connection.execute(text("ALTER TABLE shape ADD COLUMN b int DEFAULT 2"))
        row = everything.execute(connection).one()
        assert row == (1, 2) and row.b == 2


def test_columns_a_row_cannot_name_are_refused(app):
    engine = app.extensions["db.engine"]
    with engine.connect() as connection, connection.begin(), pytest.raises(exc.StatementError):
        hot_sql.HotStatement(text('SELECT 1 AS "from", 2 AS "from"')).execute(connection)


def test_compiled_forms_go_with_their_engine(app):
    import gc
    import weakref
    engine = create_engine(app.config["DATABASE_URL"])
    with engine.connect() as connection, connection.begin():
        hot_sql.execute(connection, auth._USER_BY_TOKEN, {"token_hash": "x", "now": datetime.now(UTC)}).all()
    dialect = weakref.ref(engine.dialect)
    engine.dispose()
    del engine, connection
    gc.collect()
    assert dialect() is None
