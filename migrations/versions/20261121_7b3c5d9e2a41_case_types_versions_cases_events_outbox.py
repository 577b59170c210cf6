"""case types, versions, cases, events, attachments and the outbox

Revision ID: 7b3c5d9e2a41
Revises: 1e10ee0e0947
Create Date: 2026-11-21

"""
from alembic import op
import sqlalchemy as sa

import webapp.models.types


# revision identifiers, used by Alembic.
revision = '7b3c5d9e2a41'
down_revision = '1e10ee0e0947'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('case_types',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('prefix', sa.String(length=10), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('draft', sa.JSON(), nullable=False),
    sa.Column('created_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_case_types')),
    sa.UniqueConstraint('name', name=op.f('uq_case_types_name')),
    sa.UniqueConstraint('prefix', name=op.f('uq_case_types_prefix'))
    )

    op.create_table('case_counters',
    sa.Column('case_type_id', sa.Integer(), nullable=False),
    sa.Column('next_number', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['case_type_id'], ['case_types.id'], name=op.f('fk_case_counters_case_type_id_case_types'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('case_type_id', name=op.f('pk_case_counters'))
    )

    op.create_table('case_type_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_type_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('definition', sa.JSON(), nullable=False),
    sa.Column('published_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('published_by_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['case_type_id'], ['case_types.id'], name=op.f('fk_case_type_versions_case_type_id_case_types'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['published_by_id'], ['users.id'], name=op.f('fk_case_type_versions_published_by_id_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_case_type_versions')),
    sa.UniqueConstraint('case_type_id', 'number', name=op.f('uq_case_type_versions_case_type_id'))
    )

    op.create_table('cases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_type_id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('reference', sa.String(length=24), nullable=False),
    sa.Column('subject', sa.String(length=300), nullable=False),
    sa.Column('requester', sa.String(length=320), nullable=False),
    sa.Column('stage', sa.String(length=40), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('resolution', sa.String(length=20), nullable=True),
    sa.Column('fields', sa.JSON(), nullable=False),
    sa.Column('approvals', sa.JSON(), nullable=False),
    sa.Column('assignee_id', sa.Integer(), nullable=True),
    sa.Column('queue', sa.String(length=20), nullable=True),
    sa.Column('approvers', sa.JSON(), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('stage_entered_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sla_goal_at', webapp.models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('sla_deadline_at', webapp.models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('row_version', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['assignee_id'], ['users.id'], name=op.f('fk_cases_assignee_id_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['case_type_id'], ['case_types.id'], name=op.f('fk_cases_case_type_id_case_types'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['created_by_id'], ['users.id'], name=op.f('fk_cases_created_by_id_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['version_id'], ['case_type_versions.id'], name=op.f('fk_cases_version_id_case_type_versions'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cases')),
    sa.UniqueConstraint('case_type_id', 'number', name=op.f('uq_cases_case_type_id')),
    sa.UniqueConstraint('reference', name=op.f('uq_cases_reference'))
    )

    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.create_index('ix_cases_assignee_status', ['assignee_id', 'status', 'updated_at'], unique=False)
        batch_op.create_index('ix_cases_queue_status', ['queue', 'status', 'updated_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_cases_requester'), ['requester'], unique=False)
        batch_op.create_index('ix_cases_status_created', ['status', 'created_at', 'id'], unique=False)
        batch_op.create_index('ix_cases_status_deadline', ['status', 'sla_deadline_at'], unique=False)
        batch_op.create_index('ix_cases_status_updated', ['status', 'updated_at', 'id'], unique=False)
        batch_op.create_index('ix_cases_type_stage_updated', ['case_type_id', 'stage', 'updated_at', 'id'], unique=False)
        batch_op.create_index('ix_cases_type_status_updated', ['case_type_id', 'status', 'updated_at', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_cases_version_id'), ['version_id'], unique=False)

    op.create_table('case_attachments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('content_type', sa.String(length=100), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('uploaded_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_case_attachments_case_id_cases'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['uploaded_by_id'], ['users.id'], name=op.f('fk_case_attachments_uploaded_by_id_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_case_attachments'))
    )

    with op.batch_alter_table('case_attachments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_case_attachments_case_id'), ['case_id'], unique=False)

    op.create_table('case_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('actor_id', sa.Integer(), nullable=True),
    sa.Column('actor', sa.String(length=320), nullable=False),
    sa.Column('channel', sa.String(length=10), nullable=False),
    sa.Column('action', sa.String(length=100), nullable=False),
    sa.Column('from_stage', sa.String(length=40), nullable=False),
    sa.Column('to_stage', sa.String(length=40), nullable=False),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('created_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['actor_id'], ['users.id'], name=op.f('fk_case_events_actor_id_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_case_events_case_id_cases'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_case_events'))
    )

    with op.batch_alter_table('case_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_case_events_case_id'), ['case_id'], unique=False)

    op.create_table('outbound_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=True),
    sa.Column('stage', sa.String(length=40), nullable=False),
    sa.Column('recipients', sa.JSON(), nullable=False),
    sa.Column('subject', sa.String(length=998), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('attach_case_files', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('created_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_outbound_messages_case_id_cases'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbound_messages'))
    )

    with op.batch_alter_table('outbound_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbound_messages_case_id'), ['case_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbound_messages_status'), ['status'], unique=False)


def downgrade():
    with op.batch_alter_table('outbound_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbound_messages_status'))
        batch_op.drop_index(batch_op.f('ix_outbound_messages_case_id'))

    op.drop_table('outbound_messages')

    with op.batch_alter_table('case_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_case_events_case_id'))

    op.drop_table('case_events')

    with op.batch_alter_table('case_attachments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_case_attachments_case_id'))

    op.drop_table('case_attachments')

    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cases_version_id'))
        batch_op.drop_index('ix_cases_type_status_updated')
        batch_op.drop_index('ix_cases_type_stage_updated')
        batch_op.drop_index('ix_cases_status_updated')
        batch_op.drop_index('ix_cases_status_deadline')
        batch_op.drop_index('ix_cases_status_created')
        batch_op.drop_index(batch_op.f('ix_cases_requester'))
        batch_op.drop_index('ix_cases_queue_status')
        batch_op.drop_index('ix_cases_assignee_status')

    op.drop_table('cases')

    op.drop_table('case_type_versions')

    op.drop_table('case_counters')

    op.drop_table('case_types')
