"""R21: ending a user's identity link ends the vouchers they hold (vouchers.holder_user_id index)

When the window ends an account's link to a person (staff's remedy, or a new reserved number ending
the phone links), the codes that account issued and has not used yet stop working at once: a code
lives VOUCHER_TTL_SECONDS and would otherwise still spend the person's account after the link was
taken away. Finding them is one probe of this index instead of a scan of every voucher ever issued.
Built CONCURRENTLY on PostgreSQL (vouchers is a hot table: issuing a code must not wait for the
build) — see docs/OPERATIONS.md "Upgrade".

Revision ID: 0008
Revises: 0007
"""
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

INDEX = 'ix_vouchers_holder_user_id'


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            # An earlier run stopped by lock_timeout can leave an INVALID index of this name behind.
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
            op.create_index(INDEX, 'vouchers', ['holder_user_id'], unique=False, postgresql_concurrently=True)
    else:
        op.create_index(INDEX, 'vouchers', ['holder_user_id'], unique=False)


def downgrade():
    op.drop_index(INDEX, table_name='vouchers')
