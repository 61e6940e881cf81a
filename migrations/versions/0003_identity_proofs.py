"""R21 proofs of identity and phones, R12 card settlements, non-money notices (issue 9)

- users: how and when the link to a registry person was proven; the platform-proven phone.
  Users linked before proofs existed (no proof recorded) lose the link: person_id moves to
  unproven_person_id and they must prove who they are again (README, "Operations").
- persons: the reserved mobile number (encrypted + blind index).
- identity_link_codes (window proof) and phone_proofs (each platform phone proof used once).
- settlements: auth_method voucher|card; voucher_id is empty for a card settlement.
- notices: binding and identity notices carry no settlement or amount.

Revision ID: 0003
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa
import models.base  # noqa: F401 (UTCDateTime)


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
_OLD_KINDS = "kind IN ('deduction', 'refund', 'receipt')"
_NEW_KINDS = "kind IN ('deduction', 'refund', 'receipt', 'binding', 'identity')"


def upgrade():
    op.create_table('identity_link_codes',
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', _ID, nullable=False),
    sa.Column('expires_at', models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('used_at', models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('created_at', models.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_identity_link_codes_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_identity_link_codes')),
    )
    with op.batch_alter_table('identity_link_codes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_identity_link_codes_code_hash'), ['code_hash'], unique=False)
        batch_op.create_index(batch_op.f('ix_identity_link_codes_user_id'), ['user_id'], unique=False)

    op.create_table('phone_proofs',
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('user_id', _ID, nullable=False),
    sa.Column('channel', sa.String(length=8), nullable=False),
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('created_at', models.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_phone_proofs_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_phone_proofs')),
    sa.UniqueConstraint('digest', name=op.f('uq_phone_proofs_digest'))
    )
    with op.batch_alter_table('phone_proofs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_phone_proofs_user_id'), ['user_id'], unique=False)

    with op.batch_alter_table('notices', schema=None) as batch_op:
        batch_op.alter_column('settlement_id', existing_type=_ID, nullable=True)
        batch_op.alter_column('settlement_no', existing_type=sa.String(length=32), nullable=True)
        batch_op.alter_column('amount_fen', existing_type=sa.BigInteger(), nullable=True)
        batch_op.drop_constraint(op.f('ck_notices_kind'), type_='check')
        batch_op.create_check_constraint('kind', _NEW_KINDS)

    with op.batch_alter_table('persons', schema=None) as batch_op:
        batch_op.add_column(sa.Column('phone_enc', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('phone_bidx', sa.String(length=64), nullable=True))

    with op.batch_alter_table('settlements', schema=None) as batch_op:
        batch_op.add_column(sa.Column('auth_method', sa.String(length=8), server_default='voucher', nullable=False))
        batch_op.alter_column('voucher_id', existing_type=_ID, nullable=True)
        batch_op.create_check_constraint('auth_method', "auth_method IN ('voucher', 'card')")

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('identity_proof', sa.String(length=24), nullable=True))
        batch_op.add_column(sa.Column('identity_proven_at', models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('unproven_person_id', _ID, nullable=True))
        batch_op.add_column(sa.Column('phone_enc', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('phone_bidx', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('phone_proof', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('phone_proven_at', models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_users_unproven_person_id_persons'), 'persons', ['unproven_person_id'], ['id'])

    # R21: a link made from name + ID number alone proves nothing. Every user linked without a
    # recorded proof is unlinked (their person is kept in unproven_person_id) and must prove again.
    op.execute(
        "UPDATE users SET unproven_person_id = person_id, person_id = NULL, verified_at = NULL "
        "WHERE person_id IS NOT NULL AND identity_proof IS NULL"
    )


def downgrade():
    # The unproven links are not restored: a downgrade must not hand accounts back on name + ID alone.
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_users_unproven_person_id_persons'), type_='foreignkey')
        batch_op.drop_column('phone_proven_at')
        batch_op.drop_column('phone_proof')
        batch_op.drop_column('phone_bidx')
        batch_op.drop_column('phone_enc')
        batch_op.drop_column('unproven_person_id')
        batch_op.drop_column('identity_proven_at')
        batch_op.drop_column('identity_proof')

    # Money records are never deleted: a database holding card settlements cannot go back.
    if op.get_bind().execute(sa.text("SELECT COUNT(*) FROM settlements WHERE voucher_id IS NULL")).scalar():
        raise RuntimeError("card settlements exist; revision 0001 cannot hold them")
    with op.batch_alter_table('settlements', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_settlements_auth_method'), type_='check')
        batch_op.alter_column('voucher_id', existing_type=_ID, nullable=False)
        batch_op.drop_column('auth_method')

    with op.batch_alter_table('persons', schema=None) as batch_op:
        batch_op.drop_column('phone_bidx')
        batch_op.drop_column('phone_enc')

    op.execute("DELETE FROM notices WHERE settlement_id IS NULL")
    with op.batch_alter_table('notices', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_notices_kind'), type_='check')
        batch_op.create_check_constraint('kind', _OLD_KINDS)
        batch_op.alter_column('amount_fen', existing_type=sa.BigInteger(), nullable=False)
        batch_op.alter_column('settlement_no', existing_type=sa.String(length=32), nullable=False)
        batch_op.alter_column('settlement_id', existing_type=_ID, nullable=False)

    with op.batch_alter_table('phone_proofs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_phone_proofs_user_id'))
    op.drop_table('phone_proofs')
    with op.batch_alter_table('identity_link_codes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_identity_link_codes_user_id'))
        batch_op.drop_index(batch_op.f('ix_identity_link_codes_code_hash'))
    op.drop_table('identity_link_codes')
