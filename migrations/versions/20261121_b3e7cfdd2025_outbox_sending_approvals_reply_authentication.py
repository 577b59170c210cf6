"""outbox sending, approvals and reply authentication

Revision ID: b3e7cfdd2025
Revises: d8766972b49a
Create Date: 2026-11-21 08:59:02.376249

"""
from alembic import op
import sqlalchemy as sa

import webapp.models.types


# revision identifiers, used by Alembic.
revision = 'b3e7cfdd2025'
down_revision = 'd8766972b49a'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('outbound_recipients',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('outbound_id', sa.Integer(), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('created_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['outbound_id'], ['outbound_messages.id'], name=op.f('fk_outbound_recipients_outbound_id_outbound_messages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbound_recipients'))
    )
    with op.batch_alter_table('outbound_recipients', schema=None) as batch_op:
        batch_op.create_index('ix_outbound_recipients_address_created', ['address', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbound_recipients_outbound_id'), ['outbound_id'], unique=False)

    op.create_table('approvals',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('approver', sa.String(length=320), nullable=False),
    sa.Column('stage', sa.String(length=40), nullable=False),
    sa.Column('stage_visit', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('expires_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('used_at', webapp.models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('decided_via', sa.String(length=10), nullable=False),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('outbound_id', sa.Integer(), nullable=True),
    sa.Column('inbound_id', sa.Integer(), nullable=True),
    sa.Column('created_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_approvals_case_id_cases'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['inbound_id'], ['inbound_messages.id'], name=op.f('fk_approvals_inbound_id_inbound_messages'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['outbound_id'], ['outbound_messages.id'], name=op.f('fk_approvals_outbound_id_outbound_messages'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['version_id'], ['case_type_versions.id'], name=op.f('fk_approvals_version_id_case_type_versions'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_approvals')),
    sa.UniqueConstraint('case_id', 'stage_visit', 'approver', name=op.f('uq_approvals_case_id')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_approvals_token_hash'))
    )
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_approvals_case_id'), ['case_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_approvals_status'), ['status'], unique=False)

    with op.batch_alter_table('case_types', schema=None) as batch_op:
        batch_op.add_column(sa.Column('email_account_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_case_types_email_account_id'), ['email_account_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_case_types_email_account_id_email_accounts'), 'email_accounts', ['email_account_id'], ['id'], ondelete='SET NULL')

    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stage_visit', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('email_account_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_cases_email_account_id'), ['email_account_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_cases_email_account_id_email_accounts'), 'email_accounts', ['email_account_id'], ['id'], ondelete='SET NULL')

    with op.batch_alter_table('email_accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('require_authenticated_replies', sa.Boolean(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('trusted_authserv_ids', sa.String(length=500), server_default='', nullable=False))

    with op.batch_alter_table('outbound_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('account_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('kind', sa.String(length=20), server_default='notification', nullable=False))
        batch_op.add_column(sa.Column('cc', sa.JSON(), server_default='[]', nullable=False))
        batch_op.add_column(sa.Column('attachment_ids', sa.JSON(), server_default='[]', nullable=False))
        batch_op.add_column(sa.Column('automatic', sa.Boolean(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('message_id', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('in_reply_to', sa.String(length=998), nullable=True))
        batch_op.add_column(sa.Column('references', sa.JSON(), server_default='[]', nullable=False))
        batch_op.add_column(sa.Column('reply_to', sa.String(length=320), server_default='', nullable=False))
        batch_op.add_column(sa.Column('token_encrypted', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('next_attempt_at', webapp.models.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('sending_at', webapp.models.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('sent_at', webapp.models.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_error', sa.Text(), server_default='', nullable=False))
        batch_op.add_column(sa.Column('created_by_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_outbound_messages_account_id'), ['account_id'], unique=False)
        batch_op.create_index('ix_outbound_status_next_attempt', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_unique_constraint(batch_op.f('uq_outbound_messages_message_id'), ['message_id'])
        batch_op.create_foreign_key(batch_op.f('fk_outbound_messages_created_by_id_users'), 'users', ['created_by_id'], ['id'], ondelete='SET NULL')
        batch_op.create_foreign_key(batch_op.f('fk_outbound_messages_account_id_email_accounts'), 'email_accounts', ['account_id'], ['id'], ondelete='SET NULL')



def downgrade():
    with op.batch_alter_table('outbound_messages', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_outbound_messages_account_id_email_accounts'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_outbound_messages_created_by_id_users'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('uq_outbound_messages_message_id'), type_='unique')
        batch_op.drop_index('ix_outbound_status_next_attempt')
        batch_op.drop_index(batch_op.f('ix_outbound_messages_account_id'))
        batch_op.drop_column('created_by_id')
        batch_op.drop_column('last_error')
        batch_op.drop_column('sent_at')
        batch_op.drop_column('sending_at')
        batch_op.drop_column('next_attempt_at')
        batch_op.drop_column('attempts')
        batch_op.drop_column('token_encrypted')
        batch_op.drop_column('reply_to')
        batch_op.drop_column('references')
        batch_op.drop_column('in_reply_to')
        batch_op.drop_column('message_id')
        batch_op.drop_column('automatic')
        batch_op.drop_column('attachment_ids')
        batch_op.drop_column('cc')
        batch_op.drop_column('kind')
        batch_op.drop_column('account_id')

    with op.batch_alter_table('email_accounts', schema=None) as batch_op:
        batch_op.drop_column('trusted_authserv_ids')
        batch_op.drop_column('require_authenticated_replies')

    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_cases_email_account_id_email_accounts'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_cases_email_account_id'))
        batch_op.drop_column('email_account_id')
        batch_op.drop_column('stage_visit')

    with op.batch_alter_table('case_types', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_case_types_email_account_id_email_accounts'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_case_types_email_account_id'))
        batch_op.drop_column('email_account_id')

    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_approvals_status'))
        batch_op.drop_index(batch_op.f('ix_approvals_case_id'))

    op.drop_table('approvals')
    with op.batch_alter_table('outbound_recipients', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbound_recipients_outbound_id'))
        batch_op.drop_index('ix_outbound_recipients_address_created')

    op.drop_table('outbound_recipients')
