"""Alembic environment: runs inside the Flask app (``flask --app wsgi db upgrade``) or, for tests
and tools, with a connection passed in ``config.attributes["connection"]``."""

from __future__ import annotations

from alembic import context

from models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
        user_module_prefix="models.base.",
    )
    with context.begin_transaction():
        context.run_migrations()


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
