"""Alembic environment: runs inside the Flask app (``flask --app wsgi db upgrade``) or, for tests
and tools, with a connection passed in ``config.attributes["connection"]``."""

from __future__ import annotations

from alembic import context

from models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    # A connection passed in a transaction its caller began (scripts/make_migration.py): the
    # migrations run inside it and the caller ends it; nothing below may end it, and SQLite would
    # ignore the pragma inside it anyway.
    foreign_keys_off = connection.dialect.name == "sqlite" and not connection.in_transaction()
    if foreign_keys_off:
        # A batch migration rebuilds a table (copy, drop, rename). The service's engine enforces
        # foreign keys on SQLite, and dropping a table other tables reference then fails ("FOREIGN
        # KEY constraint failed") as soon as rows reference it. SQLite ignores this pragma inside a
        # transaction, so it is set before the migrations' transaction — one transaction for all of
        # them (SQLite's DDL is transactional; Alembic assumes otherwise unless told), so that the
        # foreign-key check at its end can still roll everything back — and put back after it.
        raw = connection.connection.driver_connection
        enforced = raw.execute("PRAGMA foreign_keys").fetchone()[0]
        raw.execute("PRAGMA foreign_keys=OFF")
    try:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            render_as_batch=connection.dialect.name == "sqlite",
            transactional_ddl=True,  # PostgreSQL's default; SQLite: see above
            user_module_prefix="models.base.",
        )
        with context.begin_transaction():
            context.run_migrations()
            if foreign_keys_off:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migration broke foreign keys (rolled back): {broken[:5]}")
    finally:
        if foreign_keys_off:
            if connection.in_transaction():
                connection.rollback()
            raw.execute(f"PRAGMA foreign_keys={'ON' if enforced else 'OFF'}")


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from flask import current_app

    with current_app.extensions["db.engine"].connect() as conn:
        _run(conn)


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
