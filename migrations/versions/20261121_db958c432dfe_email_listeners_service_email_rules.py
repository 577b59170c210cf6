"""email listeners, service email rules, inbound message identity and outcome

Revision ID: db958c432dfe
Revises: f9656888a3eb
Create Date: 2026-11-21 08:04:59.359770

"""
from alembic import op
import sqlalchemy as sa

import webapp.models.types


# revision identifiers, used by Alembic.
revision = 'db958c432dfe'
down_revision = 'f9656888a3eb'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('service_email_rules',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('action', sa.String(length=20), nullable=False),
    sa.Column('case_type_id', sa.Integer(), nullable=True),
    sa.Column('field_mappings', sa.JSON(), nullable=False),
    sa.Column('stage_action', sa.String(length=100), nullable=False),
    sa.Column('resolved_policy', sa.String(length=20), nullable=False),
    sa.Column('send_ack', sa.Boolean(), nullable=False),
    sa.Column('ack_subject', sa.String(length=300), nullable=False),
    sa.Column('ack_body', sa.Text(), nullable=False),
    sa.Column('max_attachment_bytes', sa.Integer(), nullable=False),
    sa.Column('max_attachments', sa.Integer(), nullable=False),
    sa.Column('created_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['case_type_id'], ['case_types.id'], name=op.f('fk_service_email_rules_case_type_id_case_types'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_service_email_rules')),
    sa.UniqueConstraint('name', name=op.f('uq_service_email_rules_name'))
    )
    with op.batch_alter_table('service_email_rules', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_service_email_rules_case_type_id'), ['case_type_id'], unique=False)

    op.create_table('email_listeners',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('folder', sa.String(length=255), nullable=False),
    sa.Column('message_format', sa.String(length=10), nullable=False),
    sa.Column('rule_id', sa.Integer(), nullable=True),
    sa.Column('poll_interval_seconds', sa.Integer(), nullable=False),
    sa.Column('max_batch', sa.Integer(), nullable=False),
    sa.Column('after_processing', sa.String(length=20), nullable=False),
    sa.Column('move_to_folder', sa.String(length=255), nullable=False),
    sa.Column('max_message_bytes', sa.Integer(), nullable=False),
    sa.Column('send_error_email', sa.Boolean(), nullable=False),
    sa.Column('use_idle', sa.Boolean(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('uidvalidity', sa.BigInteger(), nullable=True),
    sa.Column('last_uid', sa.BigInteger(), nullable=False),
    sa.Column('last_poll_at', webapp.models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_poll_ok', sa.Boolean(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('processed_count', sa.Integer(), nullable=False),
    sa.Column('quarantined_count', sa.Integer(), nullable=False),
    sa.Column('created_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['email_accounts.id'], name=op.f('fk_email_listeners_account_id_email_accounts'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['rule_id'], ['service_email_rules.id'], name=op.f('fk_email_listeners_rule_id_service_email_rules'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_email_listeners')),
    sa.UniqueConstraint('name', name=op.f('uq_email_listeners_name'))
    )
    with op.batch_alter_table('email_listeners', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_email_listeners_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_email_listeners_rule_id'), ['rule_id'], unique=False)

    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('listener_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('account_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('folder', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('uidvalidity', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('uid', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('uidl', sa.String(length=70), nullable=True))
        batch_op.add_column(sa.Column('graph_id', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('case_id', sa.Integer(), nullable=True))
        # Rows stored before this revision get empty outcomes.
        batch_op.add_column(sa.Column('correlation', sa.Text(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('decisions', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('processed_at', webapp.models.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_inbound_messages_case_id'), ['case_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_inbound_messages_listener_id'), ['listener_id'], unique=False)
        batch_op.create_unique_constraint('uq_inbound_graph', ['account_id', 'graph_id'])
        batch_op.create_unique_constraint('uq_inbound_imap', ['account_id', 'folder', 'uidvalidity', 'uid'])
        batch_op.create_unique_constraint('uq_inbound_pop3', ['account_id', 'uidl'])
        batch_op.create_foreign_key(batch_op.f('fk_inbound_messages_account_id_email_accounts'), 'email_accounts', ['account_id'], ['id'], ondelete='SET NULL')
        batch_op.create_foreign_key(batch_op.f('fk_inbound_messages_listener_id_email_listeners'), 'email_listeners', ['listener_id'], ['id'], ondelete='SET NULL')
        batch_op.create_foreign_key(batch_op.f('fk_inbound_messages_case_id_cases'), 'cases', ['case_id'], ['id'], ondelete='SET NULL')



def downgrade():
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_inbound_messages_case_id_cases'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_inbound_messages_listener_id_email_listeners'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_inbound_messages_account_id_email_accounts'), type_='foreignkey')
        batch_op.drop_constraint('uq_inbound_pop3', type_='unique')
        batch_op.drop_constraint('uq_inbound_imap', type_='unique')
        batch_op.drop_constraint('uq_inbound_graph', type_='unique')
        batch_op.drop_index(batch_op.f('ix_inbound_messages_listener_id'))
        batch_op.drop_index(batch_op.f('ix_inbound_messages_case_id'))
        batch_op.drop_column('processed_at')
        batch_op.drop_column('attempts')
        batch_op.drop_column('decisions')
        batch_op.drop_column('correlation')
        batch_op.drop_column('case_id')
        batch_op.drop_column('graph_id')
        batch_op.drop_column('uidl')
        batch_op.drop_column('uid')
        batch_op.drop_column('uidvalidity')
        batch_op.drop_column('folder')
        batch_op.drop_column('account_id')
        batch_op.drop_column('listener_id')

    with op.batch_alter_table('email_listeners', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_email_listeners_rule_id'))
        batch_op.drop_index(batch_op.f('ix_email_listeners_account_id'))

    op.drop_table('email_listeners')
    with op.batch_alter_table('service_email_rules', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_service_email_rules_case_type_id'))

    op.drop_table('service_email_rules')
