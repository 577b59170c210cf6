"""incoming messages' bytes in a table of their own

A message's row changes when it is claimed and again when it is given its outcome, and SQLite
writes a whole row again whenever one of its columns changes: the message's bytes, up to
megabytes, were written three times. They move to inbound_raw, written once; the stored
messages' bytes are copied there.

The column is dropped with ALTER TABLE ... DROP COLUMN, not by copying the table as Alembic's
batch mode does on SQLite: dropping inbound_messages there would, with foreign keys on, delete
the copied bytes and unlink the case events that point at the messages. SQLite 3.35 (2021) or
later is needed. On PostgreSQL the dropped column's data keeps its space until VACUUM FULL
(docs/operations.md). A downgrade puts the bytes back; on SQLite the column it adds again allows
NULL, since adding NOT NULL would need that copy of the table.

Revision ID: 474cfaa859b9
Revises: 79f3518755c5
Create Date: 2026-11-21 22:54:42.983525

"""
import sqlite3

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy import text

# revision identifiers, used by Alembic.
revision = '474cfaa859b9'
down_revision = '79f3518755c5'
branch_labels = None
depends_on = None


def _lz4(table):
    """Compress the table's raw column with lz4 where PostgreSQL has it (see the lz4 revision)."""
    if context.is_offline_mode() or op.get_context().dialect.name != "postgresql":
        return
    choices = op.get_bind().execute(
        text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
    ).scalar()
    if choices and "lz4" in choices:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN raw SET COMPRESSION lz4")


def upgrade():
    if op.get_context().dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 35):
        raise RuntimeError(
            f"This upgrade needs SQLite 3.35 or later; Python uses {sqlite3.sqlite_version}."
        )
    op.create_table(
        'inbound_raw',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('raw', sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ['id'],
            ['inbound_messages.id'],
            name=op.f('fk_inbound_raw_id_inbound_messages'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_inbound_raw')),
    )
    _lz4("inbound_raw")
    op.execute("INSERT INTO inbound_raw (id, raw) SELECT id, raw FROM inbound_messages")
    op.execute("ALTER TABLE inbound_messages DROP COLUMN raw")


def downgrade():
    op.add_column('inbound_messages', sa.Column('raw', sa.LargeBinary(), nullable=True))
    _lz4("inbound_messages")
    op.execute(
        "UPDATE inbound_messages SET raw = "
        "(SELECT raw FROM inbound_raw WHERE inbound_raw.id = inbound_messages.id)"
    )
    if op.get_context().dialect.name != "sqlite":
        op.alter_column('inbound_messages', 'raw', nullable=False)
    op.drop_table('inbound_raw')
