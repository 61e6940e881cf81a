"""staff API tokens expire and can be revoked

Revision ID: 0005
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa
import models.base

revision = '0005'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('staff_users') as batch_op:
        batch_op.add_column(sa.Column('token_expires_at', models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('token_revoked_at', models.base.UTCDateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table('staff_users') as batch_op:
        batch_op.drop_column('token_revoked_at')
        batch_op.drop_column('token_expires_at')
