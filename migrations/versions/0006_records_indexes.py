"""records: owner/beneficiary/year copied onto payments and refund parts, with their indexes (issue 13)

Every deduction-records query becomes one index range whoever the caller is: the beneficiary's
payments (no index served them), a year's rows (the filter sat on the joined settlement), and
refund credits by owner (a generic prepared plan walked all of a heavy owner's payments).

Existing rows are filled from their settlement / payment / refund before the columns become NOT
NULL. The year is the Asia/Shanghai calendar year (UTC+8, no daylight saving since 1991).

Revision ID: 0006
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0003'
branch_labels = None
depends_on = None


def _shanghai_year(column: str) -> str:
    if op.get_bind().dialect.name == "postgresql":
        return f"CAST(EXTRACT(YEAR FROM {column} AT TIME ZONE 'Asia/Shanghai') AS INTEGER)"
    return f"CAST(strftime('%Y', {column}, '+8 hours') AS INTEGER)"


def upgrade():
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('beneficiary_person_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.add_column(sa.Column('created_year', sa.Integer(), nullable=True))
    with op.batch_alter_table('refund_parts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner_person_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.add_column(sa.Column('beneficiary_person_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.add_column(sa.Column('created_year', sa.Integer(), nullable=True))

    op.execute(
        "UPDATE payments SET "
        "beneficiary_person_id = (SELECT s.beneficiary_person_id FROM settlements s WHERE s.id = payments.settlement_id), "
        f"created_year = (SELECT {_shanghai_year('s.created_at')} FROM settlements s "
        "WHERE s.id = payments.settlement_id)"
    )
    op.execute(
        "UPDATE refund_parts SET "
        "owner_person_id = (SELECT p.owner_person_id FROM payments p WHERE p.id = refund_parts.payment_id), "
        "beneficiary_person_id = (SELECT p.beneficiary_person_id FROM payments p "
        "WHERE p.id = refund_parts.payment_id), "
        f"created_year = (SELECT {_shanghai_year('r.created_at')} FROM refunds r WHERE r.id = refund_parts.refund_id)"
    )

    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.alter_column('beneficiary_person_id', existing_type=sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False)
        batch_op.alter_column('created_year', existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key(batch_op.f('fk_payments_beneficiary_person_id_persons'), 'persons',
                                    ['beneficiary_person_id'], ['id'])
        batch_op.create_index('ix_payments_beneficiary', ['beneficiary_person_id', 'id'], unique=False)
        batch_op.create_index('ix_payments_beneficiary_year', ['beneficiary_person_id', 'created_year', 'id'],
                              unique=False)
        batch_op.create_index('ix_payments_owner_year', ['owner_person_id', 'created_year', 'id'], unique=False)
    with op.batch_alter_table('refund_parts', schema=None) as batch_op:
        batch_op.alter_column('owner_person_id', existing_type=sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False)
        batch_op.alter_column('beneficiary_person_id', existing_type=sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False)
        batch_op.alter_column('created_year', existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key(batch_op.f('fk_refund_parts_owner_person_id_persons'), 'persons',
                                    ['owner_person_id'], ['id'])
        batch_op.create_foreign_key(batch_op.f('fk_refund_parts_beneficiary_person_id_persons'), 'persons',
                                    ['beneficiary_person_id'], ['id'])
        batch_op.create_index('ix_refund_parts_owner', ['owner_person_id', 'id'], unique=False)
        batch_op.create_index('ix_refund_parts_beneficiary', ['beneficiary_person_id', 'id'], unique=False)
        batch_op.create_index('ix_refund_parts_owner_year', ['owner_person_id', 'created_year', 'id'], unique=False)
        batch_op.create_index('ix_refund_parts_beneficiary_year', ['beneficiary_person_id', 'created_year', 'id'],
                              unique=False)


def downgrade():
    with op.batch_alter_table('refund_parts', schema=None) as batch_op:
        batch_op.drop_index('ix_refund_parts_beneficiary_year')
        batch_op.drop_index('ix_refund_parts_owner_year')
        batch_op.drop_index('ix_refund_parts_beneficiary')
        batch_op.drop_index('ix_refund_parts_owner')
        batch_op.drop_constraint(batch_op.f('fk_refund_parts_beneficiary_person_id_persons'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_refund_parts_owner_person_id_persons'), type_='foreignkey')
        batch_op.drop_column('created_year')
        batch_op.drop_column('beneficiary_person_id')
        batch_op.drop_column('owner_person_id')
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_index('ix_payments_owner_year')
        batch_op.drop_index('ix_payments_beneficiary_year')
        batch_op.drop_index('ix_payments_beneficiary')
        batch_op.drop_constraint(batch_op.f('fk_payments_beneficiary_person_id_persons'), type_='foreignkey')
        batch_op.drop_column('created_year')
        batch_op.drop_column('beneficiary_person_id')
