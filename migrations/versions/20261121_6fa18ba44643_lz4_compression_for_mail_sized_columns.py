"""lz4 compression for mail-sized columns

On PostgreSQL with lz4 (14 and later, when built with it), the columns that hold whole
messages, attachments and message texts are compressed with lz4 instead of pglz, which cost
the server about three times as much for each message stored (webapp/models/storage.py).
Values already stored keep their compression; other databases are left as they are.

Revision ID: 6fa18ba44643
Revises: 1614b60f3e70
Create Date: 2026-11-21 15:27:11.512290

"""
from alembic import context, op
from sqlalchemy import text

# revision identifiers, used by Alembic.
revision = '6fa18ba44643'
down_revision = '1614b60f3e70'
branch_labels = None
depends_on = None


COLUMNS = {
    "inbound_messages": "raw",
    "case_attachments": "data",
    "case_events": "comment",
    "outbound_messages": "body",
}


def _set_compression(method):
    # Only a database at hand can say whether it has lz4: an SQL script () leaves the
    # columns as they are (docs/operations.md gives the statements to run by hand).
    if context.is_offline_mode():
        return
    connection = op.get_bind()
    if connection.dialect.name != "postgresql":
        return
    choices = connection.execute(
        text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
    ).scalar()
    if not choices or "lz4" not in choices:
        return
    for table, column in COLUMNS.items():
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION {method}")


def upgrade():
    _set_compression("lz4")


def downgrade():
    _set_compression("DEFAULT")
