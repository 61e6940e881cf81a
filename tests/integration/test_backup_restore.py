"""make backup / make restore (issue 14): a dump of a database with settlements, refunds and notices
restores into a fresh database where verify-ledger is clean; a changed backup is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from models import Base
from scripts.backup import BackupError, backup, restore, verify
from tests.helpers import scratch_database
from tests.ops_helpers import money_history


def _documents(app) -> Path:
    path = Path(app.config["DOCUMENT_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    (path / "ab").mkdir(exist_ok=True)
    (path / "ab" / "proof-for-backup-test.pdf").write_bytes(b"%PDF-1.4 backup test")
    return path


def _counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        counts = {t: conn.scalar(text(f"SELECT count(*) FROM {t}"))
                  for t in ("settlements", "payments", "refunds", "journals", "notices", "deliveries")}
    engine.dispose()
    return counts


def _verify_ledger_in(make_app, url: str, documents: Path):
    restored = make_app(DATABASE_URL=url, DOCUMENT_DIR=str(documents))
    with restored.app_context():
        return restored.test_cli_runner().invoke(args=["verify-ledger"])


@pytest.mark.postgres
def test_a_postgres_backup_restores_into_a_fresh_database_with_a_clean_ledger(app, demo, client, sandbox, make_app,
                                                                               postgres, tmp_path):
    if not postgres:
        pytest.skip("needs PostgreSQL (TEST_DATABASE_URL): pg_dump/pg_restore")
    money_history(app, client, sandbox)
    documents = _documents(app)
    source_url = app.config["DATABASE_URL"]
    made = backup(source_url, documents, tmp_path / "backups")
    assert (made / "db.dump").is_file() and verify(made)["row_counts"]["refunds"] == 1

    with scratch_database("copay_restore") as target:
        restore(made, target, tmp_path / "restored-documents")
        assert _counts(target) == _counts(source_url)
        assert _counts(target)["notices"] >= 3
        assert (tmp_path / "restored-documents" / "ab" / "proof-for-backup-test.pdf").read_bytes() == \
            b"%PDF-1.4 backup test"
        result = _verify_ledger_in(make_app, target, tmp_path / "restored-documents")
        assert result.exit_code == 0, result.output
        assert "clean" in result.output
        # Restoring twice into the same (now full) database is refused, not merged.
        with pytest.raises(BackupError, match="not empty"):
            restore(made, target, tmp_path / "elsewhere")


def test_a_changed_backup_is_refused_before_anything_is_written(app, demo, client, sandbox, tmp_path):
    money_history(app, client, sandbox, settlements=1)
    made = backup(app.config["DATABASE_URL"], _documents(app), tmp_path / "backups")
    dump = next(p for p in made.iterdir() if p.name.startswith("db."))
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    target_dir = tmp_path / "restored-documents"
    with pytest.raises(BackupError, match="checksum"):
        restore(made, f"sqlite:///{tmp_path / 'never.sqlite3'}", target_dir)
    assert not target_dir.exists()


def test_a_sqlite_backup_restores_too(app, demo, client, sandbox, make_app, postgres, tmp_path):
    if postgres:
        pytest.skip("the embedded default's backup (SQLite online backup API); PostgreSQL is tested above")
    money_history(app, client, sandbox)
    made = backup(app.config["DATABASE_URL"], _documents(app), tmp_path / "backups")
    target = f"sqlite:///{tmp_path / 'restored.sqlite3'}"
    restore(made, target, tmp_path / "restored-documents")
    assert _counts(target) == _counts(app.config["DATABASE_URL"])
    result = _verify_ledger_in(make_app, target, tmp_path / "restored-documents")
    assert result.exit_code == 0 and "clean" in result.output, result.output


def test_the_schema_of_a_restored_database_is_the_models(app, demo, client, sandbox, tmp_path, postgres):
    if postgres:
        pytest.skip("covered by the PostgreSQL restore above")
    made = backup(app.config["DATABASE_URL"], _documents(app), tmp_path / "b")
    target = f"sqlite:///{tmp_path / 'r.sqlite3'}"
    restore(made, target, tmp_path / "d")
    engine = create_engine(target)
    from sqlalchemy import inspect

    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()


@pytest.mark.postgres
def test_a_backup_taken_while_the_service_writes_restores_exactly(app, demo, client, sandbox, postgres, tmp_path,
                                                                 monkeypatch):
    if not postgres:
        pytest.skip("needs PostgreSQL (TEST_DATABASE_URL): a write between the counts and pg_dump")
    import scripts.backup as backups

    money_history(app, client, sandbox, settlements=1)
    source_url = app.config["DATABASE_URL"]
    real_tool = backups.pg_tool

    def write_then_find(name):
        if name == "pg_dump":  # the service commits a movement just before pg_dump starts
            engine = create_engine(source_url)
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO journals (kind, created_at) VALUES ('registry', now())"))
            engine.dispose()
        return real_tool(name)

    monkeypatch.setattr(backups, "pg_tool", write_then_find)
    made = backup(source_url, _documents(app), tmp_path / "backups")
    monkeypatch.setattr(backups, "pg_tool", real_tool)
    with scratch_database("copay_restore") as target:
        manifest = restore(made, target, tmp_path / "restored")  # counts match the dump's own snapshot
        assert manifest["row_counts"]["journals"] == _count(target, "journals")
    assert _count(source_url, "journals") == manifest["row_counts"]["journals"] + 1


def _count(url: str, table: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = conn.scalar(text(f"SELECT count(*) FROM {table}"))
    engine.dispose()
    return found
