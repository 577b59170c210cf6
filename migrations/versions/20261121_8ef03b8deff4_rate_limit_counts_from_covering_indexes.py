"""rate limit counts from covering indexes

The rate limits count the messages of the last hour to each recipient and from each case.
With the message's id (and, for recipients, the message) in the index, that count needs no
table row; the index on the case alone is covered by the new one, which starts with it.

Revision ID: 8ef03b8deff4
Revises: 42090a37b298
Create Date: 2026-11-21 19:57:04.930044

"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '8ef03b8deff4'
down_revision = '42090a37b298'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('outbound_messages', schema=None) as batch_op:
        batch_op.create_index(
            'ix_outbound_case_created', ['case_id', 'created_at', 'id'], unique=False
        )
        batch_op.drop_index(batch_op.f('ix_outbound_messages_case_id'))

    with op.batch_alter_table('outbound_recipients', schema=None) as batch_op:
        batch_op.create_index(
            'ix_outbound_recipients_address_sent',
            ['address', 'created_at', 'outbound_id'],
            unique=False,
        )
        batch_op.drop_index(batch_op.f('ix_outbound_recipients_address_created'))


def downgrade():
    with op.batch_alter_table('outbound_recipients', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_outbound_recipients_address_created'),
            ['address', 'created_at'],
            unique=False,
        )
        batch_op.drop_index('ix_outbound_recipients_address_sent')

    with op.batch_alter_table('outbound_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbound_messages_case_id'), ['case_id'], unique=False)
        batch_op.drop_index('ix_outbound_case_created')
