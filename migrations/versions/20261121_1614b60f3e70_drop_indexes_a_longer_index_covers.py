"""drop indexes a longer index covers

ix_outbound_messages_status is the first column of ix_outbound_status_next_attempt, and
ix_approvals_case_id the first of the approvals' unique constraint: every query they served
uses the longer one, and each cost an index write per change of an outgoing message or an
approval.

Revision ID: 1614b60f3e70
Revises: b3e7cfdd2025
Create Date: 2026-11-21 13:53:50.303501

"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '1614b60f3e70'
down_revision = 'b3e7cfdd2025'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_approvals_case_id'))

    with op.batch_alter_table('outbound_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbound_messages_status'))


def downgrade():
    with op.batch_alter_table('outbound_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbound_messages_status'), ['status'], unique=False)

    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_approvals_case_id'), ['case_id'], unique=False)
