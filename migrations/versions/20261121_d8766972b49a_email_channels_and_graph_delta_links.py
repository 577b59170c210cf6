"""email channels and Graph delta links

Revision ID: d8766972b49a
Revises: db958c432dfe
Create Date: 2026-11-21 08:25:22.990301

"""
from alembic import op
import sqlalchemy as sa

import webapp.models.types


# revision identifiers, used by Alembic.
revision = 'd8766972b49a'
down_revision = 'db958c432dfe'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('email_channels',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('mode', sa.String(length=10), nullable=False),
    sa.Column('default_kind', sa.String(length=20), nullable=False),
    sa.Column('default_rule_id', sa.Integer(), nullable=True),
    sa.Column('default_case_type_id', sa.Integer(), nullable=True),
    sa.Column('created_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['default_case_type_id'], ['case_types.id'], name=op.f('fk_email_channels_default_case_type_id_case_types'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['default_rule_id'], ['service_email_rules.id'], name=op.f('fk_email_channels_default_rule_id_service_email_rules'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_email_channels')),
    sa.UniqueConstraint('name', name=op.f('uq_email_channels_name'))
    )
    with op.batch_alter_table('email_channels', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_email_channels_default_case_type_id'), ['default_case_type_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_email_channels_default_rule_id'), ['default_rule_id'], unique=False)

    op.create_table('channel_routes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('channel_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('conditions', sa.JSON(), nullable=False),
    sa.Column('target_kind', sa.String(length=20), nullable=False),
    sa.Column('rule_id', sa.Integer(), nullable=True),
    sa.Column('case_type_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['case_type_id'], ['case_types.id'], name=op.f('fk_channel_routes_case_type_id_case_types'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['channel_id'], ['email_channels.id'], name=op.f('fk_channel_routes_channel_id_email_channels'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rule_id'], ['service_email_rules.id'], name=op.f('fk_channel_routes_rule_id_service_email_rules'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_channel_routes'))
    )
    with op.batch_alter_table('channel_routes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_channel_routes_case_type_id'), ['case_type_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_channel_routes_channel_id'), ['channel_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_channel_routes_rule_id'), ['rule_id'], unique=False)

    with op.batch_alter_table('email_listeners', schema=None) as batch_op:
        batch_op.add_column(sa.Column('channel_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('graph_delta_link', sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f('ix_email_listeners_channel_id'), ['channel_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_email_listeners_channel_id_email_channels'), 'email_channels', ['channel_id'], ['id'], ondelete='RESTRICT')



def downgrade():
    with op.batch_alter_table('email_listeners', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_email_listeners_channel_id_email_channels'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_email_listeners_channel_id'))
        batch_op.drop_column('graph_delta_link')
        batch_op.drop_column('channel_id')

    with op.batch_alter_table('channel_routes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_channel_routes_rule_id'))
        batch_op.drop_index(batch_op.f('ix_channel_routes_channel_id'))
        batch_op.drop_index(batch_op.f('ix_channel_routes_case_type_id'))

    op.drop_table('channel_routes')
    with op.batch_alter_table('email_channels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_email_channels_default_rule_id'))
        batch_op.drop_index(batch_op.f('ix_email_channels_default_case_type_id'))

    op.drop_table('email_channels')
