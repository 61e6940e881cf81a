"""R21: a reserved number shared by several persons proves none of them (persons.phone_bidx index)

- persons.phone_bidx gets an index: linking by phone asks whether another person reserved the
  same number, one index probe. Built CONCURRENTLY on PostgreSQL (persons is the whole registry;
  a plain CREATE INDEX would hold its writes for the build) — see docs/OPERATIONS.md "Upgrade".
- Users linked by the phone proof to a person whose reserved number another person reserved too
  lose the link, as 0003 did for links without a proof: person_id moves to unproven_person_id and
  they prove again (the real-name check or the window). Before this revision such a number linked whoever held the phone
  as any of the persons who reserved it (a child's phone reserved for the parents: the child
  linked as a parent and could spend the parent's account).

Revision ID: 0007
Revises: 0004
"""
from alembic import op


revision = '0007'
down_revision = '0004'
branch_labels = None
depends_on = None

INDEX = 'ix_persons_phone_bidx'


def upgrade():
    # First, in the migration's transaction (the index build below commits it).
    op.execute(
        "UPDATE users SET unproven_person_id = person_id, person_id = NULL, verified_at = NULL, "
        "identity_proof = NULL, identity_proven_at = NULL "
        # Judged by the linked person's reserved number — what the phone proof matched — not by the
        # number the user has proven since (a user may have proven another phone after linking).
        "WHERE identity_proof = 'phone' AND person_id IN ("
        "SELECT me.id FROM persons me WHERE me.phone_bidx IS NOT NULL AND EXISTS ("
        "SELECT 1 FROM persons other WHERE other.phone_bidx = me.phone_bidx AND other.id <> me.id))"
    )
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            # An earlier run stopped by lock_timeout can leave an INVALID index of this name behind.
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
            op.create_index(INDEX, 'persons', ['phone_bidx'], unique=False, postgresql_concurrently=True)
    else:
        op.create_index(INDEX, 'persons', ['phone_bidx'], unique=False)


def downgrade():
    # The links undone are not restored: a shared number must not hand accounts back.
    op.drop_index(INDEX, table_name='persons')
