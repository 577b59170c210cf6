"""How PostgreSQL stores the rows and columns written for every message.

Ids: a flush of many new rows whose ids the database picks writes them in one INSERT of
every row with RETURNING, some 35 KB of SQL for 50 cases and more for 100 stored messages,
which the driver (psycopg) and the server parse and plan anew each time: about 8 ms of the
driver's time, under a profiler, for a batch of 100 messages. `assign_ids` takes the ids
from the table's sequence first, in one query; the flush then sends one short INSERT for each
row, all in one round trip.

Compression: PostgreSQL compresses a value larger than about 2 KB before it stores it, with
pglz unless a column says otherwise. pglz runs at some tens of megabytes a second and works
through most of a value before it finds that base64 attachments barely shrink: storing a 30 KB
message cost 0.6 ms of the server's time with it, 0.2 ms with lz4 (PostgreSQL 14 and later,
when built with it, as the common packages are), for the same size on disk. These columns are
written for every message that arrives, so they use lz4 where the server has it; elsewhere
nothing changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import DDL, Connection, Dialect, Table, event, func, select, text
from sqlalchemy.sql.compiler import DDLCompiler
from sqlalchemy.sql.ddl import BaseDDLElement
from sqlalchemy.sql.schema import SchemaItem

from webapp.extensions import db

# Table -> columns written with every incoming or outgoing message.
MAIL_SIZED_COLUMNS: dict[str, tuple[str, ...]] = {
    "inbound_raw": ("raw",),
    "case_attachments": ("data",),
    "case_events": ("comment",),
    "outbound_messages": ("body",),
}


def lz4_available(connection: Connection) -> bool:
    """Whether the database is PostgreSQL and can compress columns with lz4."""
    if connection.dialect.name != "postgresql":
        return False
    choices = connection.execute(
        text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
    ).scalar()
    return isinstance(choices, list) and "lz4" in choices


def lz4_statements() -> list[str]:
    """The ALTER TABLE statements that give the mail-sized columns lz4 compression."""
    return [
        f"ALTER TABLE {table} "
        + ", ".join(f"ALTER COLUMN {column} SET COMPRESSION lz4" for column in columns)
        for table, columns in MAIL_SIZED_COLUMNS.items()
    ]


def _only_with_lz4(
    ddl: BaseDDLElement,
    target: SchemaItem | str,
    bind: Connection | None,
    tables: list[Table] | None = None,
    state: Any = None,
    *,
    dialect: Dialect,
    compiler: DDLCompiler | None = None,
    checkfirst: bool = False,
) -> bool:
    return bind is not None and lz4_available(bind)


def compress_with_lz4(tables: dict[str, Table]) -> None:
    """Have `create_all` give the mail-sized columns lz4 compression on PostgreSQL (the
    migrations do the same for a database they upgrade)."""
    for name, statement in zip(MAIL_SIZED_COLUMNS, lz4_statements(), strict=True):
        ddl = DDL(statement).execute_if(callable_=_only_with_lz4)
        event.listen(tables[name], "after_create", ddl)


def assign_ids(objects: Sequence[Any]) -> None:
    """Give new objects of one model, not yet written, their ids from the table's sequence,
    in one query, on PostgreSQL (see above); elsewhere, or for one object, the flush does."""
    if len(objects) < 2:
        return
    with db.session.no_autoflush:
        ids = sequence_ids(objects[0].__tablename__, len(objects))
    if ids is not None:
        for obj, new_id in zip(objects, ids, strict=True):
            obj.id = new_id


def sequence_ids(table: str, count: int) -> list[int] | None:
    """`count` new ids of `table`, in increasing order, taken from its sequence in one query
    on PostgreSQL; None elsewhere (SQLite), where the insert picks them."""
    if db.session.get_bind().dialect.name != "postgresql":
        return None
    sequence = func.pg_get_serial_sequence(table, "id")
    numbers = func.generate_series(1, count)
    return sorted(db.session.scalars(select(func.nextval(sequence)).select_from(numbers)))
