"""drop unused indexes of inbound messages

No query looks an incoming message up by its SHA-256 or by when it was received (the inbox
and the reconciler go by status and id), and each index is written again every time a message
is stored, claimed and given its outcome.

Revision ID: 42090a37b298
Revises: 6fa18ba44643
Create Date: 2026-11-21 16:02:31.333171

"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '42090a37b298'
down_revision = '6fa18ba44643'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inbound_messages_received_at'))
        batch_op.drop_index(batch_op.f('ix_inbound_messages_sha256'))


def downgrade():
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_inbound_messages_sha256'), ['sha256'], unique=False)
        batch_op.create_index(
            batch_op.f('ix_inbound_messages_received_at'), ['received_at'], unique=False
        )
