"""Issue 8 (money holes): registry_sync journals carry the registry file's SHA-256 and snapshot time;
persons remember the snapshot time (as_of) that last wrote them.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("journals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("as_of", models.base.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table("persons", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_as_of", models.base.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("persons", schema=None) as batch_op:
        batch_op.drop_column("source_as_of")
    with op.batch_alter_table("journals", schema=None) as batch_op:
        batch_op.drop_column("as_of")
        batch_op.drop_column("source_sha256")
