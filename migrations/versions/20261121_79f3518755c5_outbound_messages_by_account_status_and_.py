"""outbound messages by account, status and id

A send job with room takes the other pending messages of its accounts, oldest first. This
index gives them in id order; the index on the account alone is covered by it, which starts
with the account.

Revision ID: 79f3518755c5
Revises: 8ef03b8deff4
Create Date: 2026-11-21 21:07:21.714476

"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '79f3518755c5'
down_revision = '8ef03b8deff4'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('outbound_messages', schema=None) as batch_op:
        batch_op.create_index(
            'ix_outbound_account_status_id', ['account_id', 'status', 'id'], unique=False
        )
        batch_op.drop_index(batch_op.f('ix_outbound_messages_account_id'))


def downgrade():
    with op.batch_alter_table('outbound_messages', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_outbound_messages_account_id'), ['account_id'], unique=False
        )
        batch_op.drop_index('ix_outbound_account_status_id')
