"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.config import ROOT, normalize_database_url
from app.extensions import make_engine
from models import Base


@pytest.fixture
def empty_database(tmp_path):
    server = os.environ.get("TEST_DATABASE_URL")
    if not server:
        yield f"sqlite:///{tmp_path / 'migrate.sqlite3'}"
        return
    server = normalize_database_url(server)
    name = f"copay_migrate_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(server).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _alembic(connection) -> AlembicConfig:
    config = AlembicConfig(str(ROOT / "migrations" / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["connection"] = connection
    return config


def _upgrade(engine, revision: str) -> None:
    # Alembic runs its own transaction (as `flask db upgrade` does): a migration that builds an index
    # CONCURRENTLY commits it and steps out of it, which a transaction begun by the caller forbids.
    with engine.connect() as conn:
        command.upgrade(_alembic(conn), revision)


def test_upgrade_to_head_matches_the_models_and_downgrade_undoes_it(empty_database):
    engine = create_engine(empty_database)
    _upgrade(engine, "head")
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diffs == [], "models changed without a migration: run `make migration MESSAGE=...`"
    with engine.connect() as conn:
        command.downgrade(_alembic(conn), "base")
    with engine.connect() as conn:
        remaining = set(engine.dialect.get_table_names(conn)) - {"alembic_version"}
    assert remaining == set()
    engine.dispose()


def test_0003_unlinks_users_verified_without_a_recorded_proof(empty_database):
    """R21: users linked by name + ID number alone before proofs existed must prove again."""
    engine = create_engine(empty_database)
    _upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO persons (id, id_number_bidx, id_number_enc, name_enc, social_card_no_enc, insurance_type,"
            " region_code, status, created_at, updated_at) VALUES (7, 'b', 'e', 'n', 'c', 'employee', '532621',"
            " 'active', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        for user_id, person_id in ((1, 7), (2, None)):
            conn.execute(text(
                "INSERT INTO users (id, channel, wechat_openid, person_id, verified_at, created_at)"
                " VALUES (:id, 'wechat', :openid, :person, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                {"id": user_id, "openid": f"o{user_id}", "person": person_id})
    _upgrade(engine, "head")
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT id, person_id, unproven_person_id, verified_at IS NULL FROM users ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [(1, None, 7, True), (2, None, None, False)]
    engine.dispose()


def test_0007_unlinks_users_whose_phone_proof_was_a_number_another_person_reserved_too(empty_database):
    """R21: a reserved number two persons share proves neither. Users the phone proof linked to a
    person whose reserved number another person reserved too must prove again — judged by the
    person's reserved number (what the proof matched), not by the number the user has proven since;
    links by another proof, and phone links to a number only their person reserved, stay."""
    engine = create_engine(empty_database)
    _upgrade(engine, "0004")  # the head before 0007
    with engine.begin() as conn:
        for person_id, phone in ((1, "shared"), (2, "shared"), (3, "own"), (4, None)):
            conn.execute(text(
                "INSERT INTO persons (id, id_number_bidx, id_number_enc, name_enc, social_card_no_enc,"
                " insurance_type, region_code, status, phone_bidx, created_at, updated_at) VALUES (:id, :bidx,"
                " 'e', 'n', 'c', 'employee', '532621', 'active', :phone, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                {"id": person_id, "bidx": f"b{person_id}", "phone": phone})
        for user_id, person_id, proof, phone in ((1, 1, "phone", "shared"), (2, 3, "phone", "own"),
                                                 (3, 2, "platform_realname", "shared"), (4, 1, "window", None),
                                                 (5, None, None, "shared"),
                                                 # proved the shared number, has proven another one since
                                                 (6, 2, "phone", "newer"),
                                                 # proved their person's own number, has proven a shared one since
                                                 (7, 3, "phone", "shared")):
            conn.execute(text(
                "INSERT INTO users (id, channel, wechat_openid, person_id, verified_at, identity_proof,"
                " identity_proven_at, phone_bidx, created_at) VALUES (:id, 'wechat', :openid, :person,"
                " CURRENT_TIMESTAMP, :proof, CURRENT_TIMESTAMP, :phone, CURRENT_TIMESTAMP)"),
                {"id": user_id, "openid": f"o{user_id}", "person": person_id, "proof": proof, "phone": phone})
    _upgrade(engine, "head")
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT id, person_id, unproven_person_id, identity_proof, verified_at IS NULL, identity_proven_at IS NULL"
            " FROM users ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [(1, None, 1, None, True, True), (2, 3, None, "phone", False, False),
                                        (3, 2, None, "platform_realname", False, False),
                                        (4, 1, None, "window", False, False), (5, None, None, None, False, False),
                                        (6, None, 2, None, True, True), (7, 3, None, "phone", False, False)]
    engine.dispose()


def _institution_5_with_its_clearing_account_40(conn, balance_fen: int) -> None:
    """As revision 0008 keeps them: institution 5 and its one clearing account, id 40."""
    conn.execute(text(
        "INSERT INTO institutions (id, code, name, kind, region_code, designated, active, api_secret_enc,"
        " created_at, updated_at) VALUES (5, 'H1', 'h', 'hospital', '532601', true, true, 's',"
        " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    conn.execute(text("INSERT INTO accounts (id, kind, institution_id, balance_fen, updated_at, created_at)"
                      " VALUES (40, 'institution', 5, :balance, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                 {"balance": balance_fen})


def test_0009_gives_each_institution_16_clearing_accounts_and_its_downgrade_folds_them_back(empty_database):
    """An institution's clearing account keeps its id, balance and entries as shard 0 and gets 15
    empty siblings; going back, the siblings' entries and balances return to shard 0 (the
    institution's total and every journal's sum unchanged) and the siblings go. On the service's own
    engine: on SQLite it enforces foreign keys, under which rebuilding a referenced table failed."""
    engine = make_engine(empty_database)
    _upgrade(engine, "0008")
    with engine.begin() as conn:
        _institution_5_with_its_clearing_account_40(conn, 700)
        conn.execute(text("INSERT INTO accounts (id, kind, balance_fen, updated_at, created_at)"
                          " VALUES (41, 'registry', -700, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO journals (id, kind, created_at) VALUES (1, 'registry', CURRENT_TIMESTAMP),"
                          " (2, 'registry', CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO ledger_entries (journal_id, account_id, amount_fen) VALUES"
                          " (1, 40, 700), (1, 41, -700)"))
    _upgrade(engine, "0009")
    with engine.begin() as conn:
        shards = conn.execute(text(
            "SELECT shard, id, balance_fen FROM accounts WHERE institution_id = 5 ORDER BY shard")).all()
        assert [s for s, _, _ in shards] == list(range(16))
        assert (shards[0][1], shards[0][2]) == (40, 700)
        assert {b for _, _, b in shards[1:]} == {0}
        assert conn.execute(text("SELECT shard FROM accounts WHERE id = 41")).scalar_one() == 0
        # Money that reached shard 3 after the upgrade.
        third = shards[3][1]
        conn.execute(text("UPDATE accounts SET balance_fen = 250 WHERE id = :id"), {"id": third})
        conn.execute(text("UPDATE accounts SET balance_fen = -950 WHERE id = 41"))
        conn.execute(text("INSERT INTO ledger_entries (journal_id, account_id, amount_fen) VALUES"
                          " (2, :third, 250), (2, 41, -250)"), {"third": third})
    with engine.connect() as conn:
        command.downgrade(_alembic(conn), "0008")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, balance_fen FROM accounts WHERE institution_id = 5")).all() == [(40, 950)]
        entries = conn.execute(text(
            "SELECT journal_id, account_id, amount_fen FROM ledger_entries ORDER BY journal_id, amount_fen")).all()
        assert [tuple(e) for e in entries] == [(1, 41, -700), (1, 40, 700), (2, 41, -250), (2, 40, 250)]
    engine.dispose()


def test_0009_can_be_run_again_after_a_run_that_gave_up_half_way(empty_database):
    """PostgreSQL: the index build commits the new column, so a run that gives up after it (lock_timeout
    on dropping the old constraint, say) leaves the column and the index behind; the next run finishes."""
    if empty_database.startswith("sqlite"):
        pytest.skip("on SQLite the migration is one transaction: a failed run leaves nothing behind")
    engine = make_engine(empty_database)
    _upgrade(engine, "0008")
    with engine.begin() as conn:
        _institution_5_with_its_clearing_account_40(conn, 0)
        # What the first run had done before giving up.
        conn.execute(text("ALTER TABLE accounts ADD COLUMN shard SMALLINT DEFAULT 0 NOT NULL"))
        conn.execute(text("CREATE UNIQUE INDEX ux_accounts_institution_shard ON accounts (institution_id, shard)"
                          " WHERE institution_id IS NOT NULL"))
    _upgrade(engine, "0009")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM accounts WHERE institution_id = 5")).scalar_one() == 16
    engine.dispose()


@pytest.mark.parametrize("service_engine", [True, False], ids=["make_engine", "create_engine"])
def test_a_sqlite_migration_gives_the_connection_back_with_foreign_keys_as_it_found_them(tmp_path, service_engine):
    """env.py turns SQLite's foreign keys off for a migration (a batch rebuild drops a referenced
    table); the connection must come back as it was: on for the service's engine, off for a plain one."""
    url = f"sqlite:///{tmp_path / 'fk.sqlite3'}"
    engine = make_engine(url) if service_engine else create_engine(url)
    with engine.connect() as conn:
        command.upgrade(_alembic(conn), "head")
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == (1 if service_engine else 0)
    engine.dispose()


def test_migrations_run_inside_a_transaction_the_caller_began(tmp_path):
    """``make migration`` (scripts/make_migration.py) upgrades a scratch SQLite database and
    autogenerates against it on one connection inside ``engine.begin()``: env.py must leave that
    transaction to its owner (it used to roll it back and close it: "Can't operate on closed
    transaction inside context manager")."""
    engine = create_engine(f"sqlite:///{tmp_path / 'caller.sqlite3'}")
    with engine.begin() as conn:
        config = _alembic(conn)
        command.upgrade(config, "head")
        command.check(config)  # autogenerate against the upgraded schema: nothing to add
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
    engine.dispose()
