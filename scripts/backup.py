"""``make backup`` / ``make restore``: the database (pg_dump custom format) and the proof documents.

    python -m scripts.backup backup  [--dir BACKUP_DIR]                 # → BACKUP_DIR/copay-<UTC time>/
    python -m scripts.backup restore PATH [--database-url URL] [--document-dir DIR]

A backup is a directory written under a temporary name and renamed when complete, holding
``db.dump`` (``pg_dump -Fc``; on the embedded SQLite default, ``db.sqlite3`` made with SQLite's
online backup API), ``documents.tar`` (``DOCUMENT_DIR``) and ``manifest.json`` (SHA-256 of each
file, the Alembic revision, row counts). ``restore`` checks every checksum first, then restores into
an EMPTY database and an empty documents directory — it refuses to overwrite anything — and ends
by saying to run ``flask --app wsgi verify-ledger`` against the restored database.

Passwords never appear on a command line (``ps``): the URL is handed to pg_dump/pg_restore as
libpq environment variables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

COUNTED_TABLES = ("persons", "accounts", "settlements", "payments", "refunds", "refund_parts", "journals",
                  "ledger_entries", "notices",
                  "deliveries", "bindings", "documents")


class BackupError(RuntimeError):
    pass


def libpq_env(url: str) -> dict[str, str]:
    """PG* variables for a SQLAlchemy/libpq URL (so the password stays off the command line)."""
    parsed = make_url(url)
    env = dict(os.environ)
    for var, value in (("PGHOST", parsed.host), ("PGPORT", parsed.port), ("PGUSER", parsed.username),
                       ("PGPASSWORD", parsed.password), ("PGDATABASE", parsed.database)):
        if value is not None:
            env[var] = str(value)
    for key, value in parsed.query.items():
        if key == "sslmode":
            env["PGSSLMODE"] = str(value)
    return env


def pg_tool(name: str) -> str:
    """The full path of pg_dump/pg_restore: from PG_BIN when set, else the PATH (client ≥ the server's version)."""
    directory = os.environ.get("PG_BIN")
    found = str(Path(directory) / name) if directory else shutil.which(name)
    if not found or not Path(found).is_file():
        raise BackupError(f"{name} not found (install postgresql-client, or set PG_BIN)")
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _facts_of(conn: Any) -> dict[str, Any]:
    names = set(inspect(conn).get_table_names())
    revision = conn.scalar(text("SELECT version_num FROM alembic_version")) if "alembic_version" in names else None
    counts = {t: conn.scalar(text(f"SELECT count(*) FROM {t}")) for t in COUNTED_TABLES if t in names}  # noqa: S608
    return {"alembic_revision": revision, "row_counts": counts}


def _facts(url: str) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return _facts_of(conn)
    finally:
        engine.dispose()


def _pg_dump(url: str, db_file: Path) -> dict[str, Any]:
    """pg_dump of one exported snapshot, and the row counts of that same snapshot (the service keeps
    writing meanwhile: counts taken outside the snapshot would not match what the dump holds)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                snapshot = conn.scalar(text("SELECT pg_export_snapshot()"))
                facts = _facts_of(conn)
                # -Fc: compressed, restorable table by table.
                subprocess.run([pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
                                "--snapshot", str(snapshot), "--file", str(db_file)], env=libpq_env(url), check=True)
    finally:
        engine.dispose()
    return facts


def backup(database_url: str, document_dir: str | Path, backup_dir: str | Path) -> Path:
    """Write one complete backup directory and return its path."""
    from app.config import normalize_database_url

    url = normalize_database_url(database_url)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    root = Path(backup_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"copay-{stamp}"
    work = root / f".copay-{stamp}.partial"
    if final.exists():
        raise BackupError(f"{final} exists already")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)
    started = time.perf_counter()
    try:
        if url.startswith("sqlite"):
            db_file = work / "db.sqlite3"
            source = sqlite3.connect(make_url(url).database)
            target = sqlite3.connect(db_file)
            with target:
                source.backup(target)
            source.close()
            target.close()
            facts = _facts(f"sqlite:///{db_file}")  # counted in the copy itself
        else:
            facts = _pg_dump(url, work / "db.dump")
        # Documents are written before the row naming them commits, so a tar taken after the dump
        # holds every document the dump refers to (and perhaps a few newer ones).
        documents = Path(document_dir)
        with tarfile.open(work / "documents.tar", "w") as tar:
            if documents.is_dir():
                tar.add(documents, arcname="documents")
        manifest = {
            "made_at": datetime.now(UTC).isoformat(),
            "engine": "sqlite" if url.startswith("sqlite") else "postgresql",
            "files": {p.name: _sha256(p) for p in sorted(work.iterdir())},
            "seconds": round(time.perf_counter() - started, 2),
            **facts,
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


def verify(path: str | Path) -> dict[str, Any]:
    """The manifest of a backup whose files are all present and unchanged; raises otherwise."""
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path}: no readable manifest.json ({exc})") from None
    for name, digest in manifest["files"].items():
        file = path / name
        if not file.is_file() or _sha256(file) != digest:
            raise BackupError(f"{file}: missing or changed since the backup (checksum mismatch)")
    return manifest


def restore(path: str | Path, database_url: str, document_dir: str | Path) -> dict[str, Any]:
    """Restore a verified backup into an empty database and an empty documents directory."""
    from app.config import normalize_database_url

    path = Path(path)
    manifest = verify(path)
    url = normalize_database_url(database_url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            existing = inspect(conn).get_table_names()
    finally:
        engine.dispose()
    if existing:
        raise BackupError(f"the target database is not empty ({len(existing)} tables): restore into a new one")
    documents = Path(document_dir)
    if documents.exists() and any(documents.iterdir()):
        raise BackupError(f"{documents} is not empty: restore the documents into a new directory")
    if manifest["engine"] == "sqlite":
        if not url.startswith("sqlite"):
            raise BackupError("this backup is of a SQLite database: restore it to a sqlite:/// URL")
        source = sqlite3.connect(path / "db.sqlite3")
        target = sqlite3.connect(make_url(url).database)
        with target:
            source.backup(target)
        source.close()
        target.close()
    else:
        if url.startswith("sqlite"):
            raise BackupError("this backup is of a PostgreSQL database: restore it to a postgresql:// URL")
        # One transaction: a restore that fails leaves the target empty, never half-restored.
        subprocess.run([pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
                        "--single-transaction", "--dbname", libpq_env(url)["PGDATABASE"], str(path / "db.dump")],
                       env=libpq_env(url), check=True)
    documents.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path / "documents.tar") as tar:
        members = [m for m in tar.getmembers() if m.name == "documents" or m.name.startswith("documents/")]
        staging = documents.parent / f".{documents.name}.restoring"
        shutil.rmtree(staging, ignore_errors=True)
        tar.extractall(staging, members=members, filter="data")
    restored = staging / "documents"
    if restored.is_dir():
        for item in restored.iterdir():
            item.rename(documents / item.name)
    shutil.rmtree(staging, ignore_errors=True)
    facts = _facts(url)
    if facts["row_counts"] != manifest["row_counts"]:
        raise BackupError(f"row counts differ after the restore: {facts['row_counts']} != {manifest['row_counts']}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.backup", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backup", help="write a backup directory")
    b.add_argument("--dir", default=os.environ.get("BACKUP_DIR", "backups"), help="where backups go (BACKUP_DIR)")
    r = sub.add_parser("restore", help="restore a backup into an empty database and documents directory")
    r.add_argument("path")
    r.add_argument("--database-url", default=None, help="target (default: DATABASE_URL)")
    r.add_argument("--document-dir", default=None, help="target (default: DOCUMENT_DIR)")
    args = parser.parse_args(argv)

    from app.config import Config

    config = Config.from_env()
    try:
        if args.command == "backup":
            started = time.perf_counter()
            made = backup(config.DATABASE_URL, config.DOCUMENT_DIR, args.dir)
            print(f"backup written to {made} in {time.perf_counter() - started:.1f} s")
        else:
            started = time.perf_counter()
            manifest = restore(args.path, args.database_url or config.DATABASE_URL,
                               args.document_dir or config.DOCUMENT_DIR)
            print(f"restored {args.path} (revision {manifest['alembic_revision']}, made {manifest['made_at']}) in "
                  f"{time.perf_counter() - started:.1f} s; now run: flask --app wsgi verify-ledger")
    except (BackupError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
