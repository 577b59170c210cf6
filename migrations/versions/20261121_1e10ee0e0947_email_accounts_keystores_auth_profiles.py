"""email accounts, keystores and OAuth 2.0 profiles

Revision ID: 1e10ee0e0947
Revises: 0c7716dffec3
Create Date: 2026-11-21

"""
from alembic import op
import sqlalchemy as sa

import webapp.models.types


# revision identifiers, used by Alembic.
revision = '1e10ee0e0947'
down_revision = '0c7716dffec3'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('keystores',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('certificates_pem', sa.Text(), nullable=False),
    sa.Column('pkcs12_encrypted', sa.Text(), nullable=True),
    sa.Column('password_encrypted', sa.Text(), nullable=True),
    sa.Column('entries', sa.JSON(), nullable=False),
    sa.Column('created_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_keystores')),
    sa.UniqueConstraint('name', name=op.f('uq_keystores_name'))
    )

    op.create_table('auth_profiles',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('grant', sa.String(length=30), nullable=False),
    sa.Column('authority', sa.String(length=500), nullable=False),
    sa.Column('graph_url', sa.String(length=500), nullable=False),
    sa.Column('client_id', sa.String(length=200), nullable=False),
    sa.Column('client_secret_encrypted', sa.Text(), nullable=True),
    sa.Column('scopes', sa.String(length=1000), nullable=False),
    sa.Column('username', sa.String(length=320), nullable=False),
    sa.Column('password_encrypted', sa.Text(), nullable=True),
    sa.Column('service_account_key_encrypted', sa.Text(), nullable=True),
    sa.Column('impersonate', sa.String(length=320), nullable=False),
    sa.Column('truststore_id', sa.Integer(), nullable=True),
    sa.Column('created_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['truststore_id'], ['keystores.id'], name=op.f('fk_auth_profiles_truststore_id_keystores'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_auth_profiles')),
    sa.UniqueConstraint('name', name=op.f('uq_auth_profiles_name'))
    )

    with op.batch_alter_table('auth_profiles', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_auth_profiles_truststore_id'), ['truststore_id'], unique=False)

    op.create_table('email_accounts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('provider', sa.String(length=20), nullable=False),
    sa.Column('sender_protocol', sa.String(length=10), nullable=False),
    sa.Column('smtp_email', sa.String(length=320), nullable=False),
    sa.Column('smtp_display_name', sa.String(length=200), nullable=False),
    sa.Column('smtp_user_id', sa.String(length=320), nullable=False),
    sa.Column('smtp_password_encrypted', sa.Text(), nullable=True),
    sa.Column('smtp_reply_to', sa.String(length=320), nullable=False),
    sa.Column('smtp_host', sa.String(length=255), nullable=False),
    sa.Column('smtp_port', sa.Integer(), nullable=True),
    sa.Column('smtp_security', sa.String(length=10), nullable=False),
    sa.Column('smtp_tls_min', sa.String(length=5), nullable=False),
    sa.Column('smtp_truststore_id', sa.Integer(), nullable=True),
    sa.Column('smtp_auth', sa.String(length=10), nullable=False),
    sa.Column('sender_auth_profile_id', sa.Integer(), nullable=True),
    sa.Column('signing_keystore_id', sa.Integer(), nullable=True),
    sa.Column('signing_alias', sa.String(length=200), nullable=False),
    sa.Column('smtp_advanced', sa.JSON(), nullable=False),
    sa.Column('graph_sender_upn', sa.String(length=320), nullable=False),
    sa.Column('graph_sender_reply_to', sa.String(length=320), nullable=False),
    sa.Column('graph_sender_timeout', sa.Integer(), nullable=True),
    sa.Column('receiver_protocol', sa.String(length=10), nullable=False),
    sa.Column('receiver_use_sender_credentials', sa.Boolean(), nullable=False),
    sa.Column('receiver_auth', sa.String(length=10), nullable=False),
    sa.Column('receiver_auth_profile_id', sa.Integer(), nullable=True),
    sa.Column('receiver_user_id', sa.String(length=320), nullable=False),
    sa.Column('receiver_password_encrypted', sa.Text(), nullable=True),
    sa.Column('receiver_host', sa.String(length=255), nullable=False),
    sa.Column('receiver_port', sa.Integer(), nullable=True),
    sa.Column('receiver_security', sa.String(length=10), nullable=False),
    sa.Column('receiver_tls_min', sa.String(length=5), nullable=False),
    sa.Column('receiver_truststore_id', sa.Integer(), nullable=True),
    sa.Column('receiver_advanced', sa.JSON(), nullable=False),
    sa.Column('graph_receiver_upn', sa.String(length=320), nullable=False),
    sa.Column('sender_tested_at', webapp.models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('sender_test_ok', sa.Boolean(), nullable=True),
    sa.Column('sender_test_message', sa.Text(), nullable=False),
    sa.Column('receiver_tested_at', webapp.models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('receiver_test_ok', sa.Boolean(), nullable=True),
    sa.Column('receiver_test_message', sa.Text(), nullable=False),
    sa.Column('created_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', webapp.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['receiver_auth_profile_id'], ['auth_profiles.id'], name=op.f('fk_email_accounts_receiver_auth_profile_id_auth_profiles'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['receiver_truststore_id'], ['keystores.id'], name=op.f('fk_email_accounts_receiver_truststore_id_keystores'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['sender_auth_profile_id'], ['auth_profiles.id'], name=op.f('fk_email_accounts_sender_auth_profile_id_auth_profiles'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['signing_keystore_id'], ['keystores.id'], name=op.f('fk_email_accounts_signing_keystore_id_keystores'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['smtp_truststore_id'], ['keystores.id'], name=op.f('fk_email_accounts_smtp_truststore_id_keystores'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_email_accounts')),
    sa.UniqueConstraint('account_id', name=op.f('uq_email_accounts_account_id'))
    )

    with op.batch_alter_table('email_accounts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_email_accounts_receiver_auth_profile_id'), ['receiver_auth_profile_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_email_accounts_receiver_truststore_id'), ['receiver_truststore_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_email_accounts_sender_auth_profile_id'), ['sender_auth_profile_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_email_accounts_signing_keystore_id'), ['signing_keystore_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_email_accounts_smtp_truststore_id'), ['smtp_truststore_id'], unique=False)


def downgrade():
    with op.batch_alter_table('email_accounts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_email_accounts_smtp_truststore_id'))
        batch_op.drop_index(batch_op.f('ix_email_accounts_signing_keystore_id'))
        batch_op.drop_index(batch_op.f('ix_email_accounts_sender_auth_profile_id'))
        batch_op.drop_index(batch_op.f('ix_email_accounts_receiver_truststore_id'))
        batch_op.drop_index(batch_op.f('ix_email_accounts_receiver_auth_profile_id'))

    op.drop_table('email_accounts')

    with op.batch_alter_table('auth_profiles', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_auth_profiles_truststore_id'))

    op.drop_table('auth_profiles')

    op.drop_table('keystores')
