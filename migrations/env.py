"""Alembic environment: runs inside the Flask app (``flask --app wsgi db upgrade``) or, for tests
and tools, with a connection passed in ``config.attributes["connection"]``."""

from __future__ import annotations

from alembic import context

from models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # A batch migration rebuilds a table (copy, drop, rename). The service's engine enforces
        # foreign keys on SQLite, and dropping a table other tables reference then fails ("FOREIGN
        # KEY constraint failed") on any database with rows. SQLite ignores this pragma inside a
        # transaction, so it is set before the migration's and the keys are checked at its end.
        raw = connection.connection.driver_connection
        raw.execute("PRAGMA foreign_keys=OFF")
    try:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            render_as_batch=sqlite,
            user_module_prefix="models.base.",
        )
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migration broke foreign keys (rolled back): {broken[:5]}")
    finally:
        if sqlite:
            raw.execute("PRAGMA foreign_keys=ON")


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
