"""Autogenerate the next Alembic migration against a scratch SQLite database at head."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from app.config import ROOT


def main(message: str) -> None:
    if not message:
        raise SystemExit('usage: make migration MESSAGE="what changed"')
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{Path(scratch) / 'scratch.sqlite3'}")
        config = AlembicConfig(str(ROOT / "migrations" / "alembic.ini"))
        config.set_main_option("script_location", str(ROOT / "migrations"))
        head = ScriptDirectory.from_config(config).get_current_head()
        next_id = f"{int(head or '0') + 1:04d}"
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            command.revision(config, message=message, autogenerate=True, rev_id=next_id)


if __name__ == "__main__":
    main(" ".join(sys.argv[1:]))
