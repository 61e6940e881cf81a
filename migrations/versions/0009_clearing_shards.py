"""An institution's clearing account becomes 16 rows (accounts.shard), so settlements stop queueing on one row

Every settlement credits its institution's clearing account, and the row lock that UPDATE takes is
held until the commit: all settlements at one hospital waited for each other there (measured:
PostgreSQL's busiest wait during `make bench` was this lock, docs/PERFORMANCE.md "Session 6").
Now an institution has 16 clearing accounts, shard 0 (the existing row, balance and history kept)
to 15; a settlement credits the one its settlement number picks, a refund debits the one its
settlement credited, and what the institution is owed is their sum. `verify-ledger` checks each
row against its own entries, as before.

- accounts.shard (smallint, default 0 — instant on PostgreSQL: no table rewrite);
- the unique key moves from (institution_id) to (institution_id, shard), a partial unique index
  over institutions' rows only, built CONCURRENTLY on PostgreSQL (accounts has a row per insured
  person: a plain build would hold settlements for its duration) — see docs/OPERATIONS.md "Upgrade";
- shards 1–15 are created, empty, for every institution that has a clearing account (15 rows per
  institution: a few thousand institutions take well under a second, so it is not a batched backfill).
The release before this one keeps working on the migrated database (docs/OPERATIONS.md "Upgrade").

Downgrade folds shards 1–15 back into shard 0: their entries are moved to it and their balances
added to it (the institution's total and every journal's balance are unchanged), then the rows go.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

INDEX = 'ux_accounts_institution_shard'
SHARDS = 16  # frozen here: app.services.ledger.CLEARING_SHARDS may change later, this revision may not


def upgrade():
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        # Every step can be run again: the index build commits the column, so a run that gives up
        # later (lock_timeout on the constraint, say) leaves the column behind for the next run.
        op.execute("ALTER TABLE accounts ADD COLUMN IF NOT EXISTS shard SMALLINT DEFAULT 0 NOT NULL")
        with op.get_context().autocommit_block():
            # An earlier run stopped by lock_timeout can leave an INVALID index of this name behind.
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
            op.create_index(INDEX, 'accounts', ['institution_id', 'shard'], unique=True,
                            postgresql_where=sa.text("institution_id IS NOT NULL"), postgresql_concurrently=True)
        op.execute("ALTER TABLE accounts DROP CONSTRAINT IF EXISTS uq_accounts_institution_id")
    else:
        with op.batch_alter_table('accounts', schema=None) as batch_op:
            batch_op.add_column(sa.Column('shard', sa.SmallInteger(), server_default='0', nullable=False))
            batch_op.drop_constraint('uq_accounts_institution_id', type_='unique')
            batch_op.create_index(INDEX, ['institution_id', 'shard'], unique=True,
                                  sqlite_where=sa.text("institution_id IS NOT NULL"))
    # Shards 1..15 of every institution, empty, dated like its shard 0 (no clock, no datetime format here).
    for shard in range(1, SHARDS):
        op.execute(
            "INSERT INTO accounts (kind, institution_id, shard, balance_fen, updated_at, created_at)"
            f" SELECT 'institution', institution_id, {shard}, 0, updated_at, created_at FROM accounts"
            " WHERE kind = 'institution' AND institution_id IS NOT NULL AND shard = 0"
            " AND NOT EXISTS (SELECT 1 FROM accounts o WHERE o.institution_id = accounts.institution_id"
            f" AND o.shard = {shard})")


def downgrade():
    # Stop the code first (a settlement of the new code may credit shards 1-15 between the steps
    # below). On PostgreSQL the tables are also locked for the fold, at once in the mode the index
    # and column changes at the end need (taking a weaker lock first could deadlock with a writer).
    if op.get_bind().dialect.name == "postgresql":
        op.execute("LOCK TABLE accounts, ledger_entries IN ACCESS EXCLUSIVE MODE")
    # Each shard's entries and balance go to shard 0 of the same institution.
    op.execute(
        "UPDATE ledger_entries SET account_id = ("
        " SELECT z.id FROM accounts a JOIN accounts z ON z.institution_id = a.institution_id AND z.shard = 0"
        " WHERE a.id = ledger_entries.account_id)"
        " WHERE account_id IN (SELECT id FROM accounts WHERE institution_id IS NOT NULL AND shard > 0)")
    op.execute(
        "UPDATE accounts SET balance_fen = balance_fen + ("
        " SELECT COALESCE(SUM(s.balance_fen), 0) FROM accounts s"
        " WHERE s.institution_id = accounts.institution_id AND s.shard > 0)"
        " WHERE institution_id IS NOT NULL AND shard = 0")
    op.execute("DELETE FROM accounts WHERE institution_id IS NOT NULL AND shard > 0")
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_index(INDEX)
        batch_op.create_unique_constraint('uq_accounts_institution_id', ['institution_id'])
        batch_op.drop_column('shard')
