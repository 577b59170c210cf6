"""`flask db upgrade` builds an empty database that matches the models, on both databases."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import delete, inspect, text

from tests.fixtures.app import both_databases
from webapp import create_app
from webapp.extensions import db
from webapp.models import InboundMessage
from webapp.models.storage import MAIL_SIZED_COLUMNS


@both_databases
def test_migrations_build_the_schema_the_models_describe(app_settings, redis_client):
    app = create_app(app_settings)
    with app.app_context():
        upgrade()
        with db.engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "render_as_batch": True}
            )
            differences = compare_metadata(context, db.metadata)
        assert differences == []
        assert {"users", "api_tokens", "inbound_messages"} <= set(
            inspect(db.engine).get_table_names()
        )
        downgrade(revision="base")
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
        db.engine.dispose()


def test_migration_files_are_date_prefixed():
    from pathlib import Path

    versions = Path(__file__).resolve().parents[2] / "migrations" / "versions"
    names = [p.name for p in versions.glob("*.py")]
    assert names
    assert all(name[:8].isdigit() and name[8] == "_" for name in names), names


def _compression(table: str, column: str) -> str:
    """The column's own compression setting: "l" for lz4, "" for the server's default."""
    return db.session.execute(
        text(
            "SELECT attcompression FROM pg_attribute "
            "WHERE attrelid = CAST(:table AS regclass) AND attname = :column"
        ),
        {"table": table, "column": column},
    ).scalar_one()


# An incoming message as each schema stores it: its bytes in the message's row, or (since
# BEFORE_RAW_APART) in inbound_raw.
_INSERT_WITH_RAW = text(
    "INSERT INTO inbound_messages (source, subject, from_address, sha256, size, raw, status, "
    "status_reason, received_at, correlation, decisions, attempts) VALUES "
    "('mta', '', '', '', :size, :raw, 'received', '', CURRENT_TIMESTAMP, '', '[]', 0) "
    "RETURNING id"
)
_INSERT_WITHOUT_RAW = text(
    "INSERT INTO inbound_messages (source, subject, from_address, sha256, size, status, "
    "status_reason, received_at, correlation, decisions, attempts) VALUES "
    "('mta', '', '', '', :size, 'received', '', CURRENT_TIMESTAMP, '', '[]', 0) RETURNING id"
)
_NEWEST_COMPRESSION = {
    "inbound_messages": text(
        "SELECT pg_column_compression(raw) FROM inbound_messages ORDER BY id DESC LIMIT 1"
    ),
    "inbound_raw": text(
        "SELECT pg_column_compression(raw) FROM inbound_raw ORDER BY id DESC LIMIT 1"
    ),
}


def _insert_message(raw: bytes, *, raw_apart: bool) -> int:
    """Store an incoming message with plain SQL, as the schema of the time had it; its id."""
    values = {"size": len(raw), "raw": raw}
    if not raw_apart:
        return db.session.execute(_INSERT_WITH_RAW, values).scalar_one()
    message_id = db.session.execute(_INSERT_WITHOUT_RAW, values).scalar_one()
    db.session.execute(
        text("INSERT INTO inbound_raw (id, raw) VALUES (:id, :raw)"), {"id": message_id, "raw": raw}
    )
    return message_id


def _stored_compression(table: str) -> str | None:
    """How PostgreSQL compressed a 40 KB text message stored now (None: not compressed)."""
    raw = b"Subject: trip\r\n\r\n" + b"Details of the trip. " * 2000
    _insert_message(raw, raw_apart=table == "inbound_raw")
    compression = db.session.execute(_NEWEST_COMPRESSION[table]).scalar_one()
    db.session.rollback()
    return compression


BEFORE_RAW_APART = "79f3518755c5"  # the revision before inbound_raw


@both_databases
def test_stored_messages_keep_their_bytes_when_they_move_to_a_table_of_their_own(
    app_settings, redis_client
):
    """Upgrading moves each stored message's bytes to inbound_raw, with nothing lost; a
    downgrade puts them back."""
    older = b"Subject: stored before\r\n\r\n" + bytes(range(256)) * 40
    newer = b"Subject: stored after\r\n\r\nthe newer one\r\n"
    app = create_app(app_settings)
    with app.app_context():
        upgrade(revision=BEFORE_RAW_APART)
        first = _insert_message(older, raw_apart=False)
        db.session.commit()
        upgrade()
        columns = {c["name"] for c in inspect(db.engine).get_columns("inbound_messages")}
        assert "raw" not in columns
        message = db.session.get(InboundMessage, first)
        assert message is not None and message.raw == older
        second = InboundMessage(source="mta", sha256="", size=len(newer), raw=newer)
        gone = InboundMessage(source="mta", sha256="", size=len(newer), raw=newer)
        db.session.add_all([second, gone])
        db.session.commit()
        second_id = second.id
        # A message deleted (by a statement, as the retention does) takes its bytes along.
        db.session.execute(delete(InboundMessage).where(InboundMessage.id == gone.id))
        db.session.commit()
        kept = db.session.execute(text("SELECT id FROM inbound_raw ORDER BY id")).scalars()
        assert list(kept) == [first, second_id]
        db.session.remove()
        downgrade(revision=BEFORE_RAW_APART)
        rows = db.session.execute(text("SELECT id, raw FROM inbound_messages"))
        restored = {row.id: bytes(row.raw) for row in rows}
        assert restored == {first: older, second_id: newer}
        assert "inbound_raw" not in inspect(db.engine).get_table_names()
        db.session.remove()
        downgrade(revision="base")
        db.engine.dispose()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_postgres_compresses_messages_and_files_with_lz4(app_settings, redis_client):
    app = create_app(app_settings)
    with app.app_context():
        lz4 = db.session.execute(
            text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
        ).scalar()
        if not lz4 or "lz4" not in lz4:
            pytest.fail("this PostgreSQL has no lz4; the packages the project installs do")
        upgrade()
        columns = [(t, c) for t, cs in MAIL_SIZED_COLUMNS.items() for c in cs]
        assert {_compression(t, c) for t, c in columns} == {"l"}
        assert _stored_compression("inbound_raw") == "lz4"
        # Before the bytes had a table of their own, the messages' rows held them.
        downgrade(revision=BEFORE_RAW_APART)
        assert _compression("inbound_messages", "raw") == "l"
        assert _stored_compression("inbound_messages") == "lz4"
        downgrade(revision="1614b60f3e70")  # the revision before lz4
        assert _compression("inbound_messages", "raw") == ""
        assert _stored_compression("inbound_messages") == "pglz"
        downgrade(revision="base")
        db.session.remove()
        # Tables made by create_all (the tests, the benchmarks) get the same.
        db.create_all()
        assert {_compression(t, c) for t, c in columns} == {"l"}
        assert _stored_compression("inbound_raw") == "lz4"
        db.session.remove()
        db.engine.dispose()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_migrations_write_an_sql_script_for_a_database_administrator(
    app_settings, redis_client, capsys
):
    """`flask db upgrade --sql` (offline: no database is asked anything) writes the whole
    script; the lz4 step, which must ask the server, leaves the columns as they are."""
    app = create_app(app_settings)
    with app.app_context():
        upgrade(sql=True)
    script = capsys.readouterr().out
    assert "CREATE TABLE inbound_messages" in script
    assert "DROP INDEX ix_inbound_messages_sha256" in script
    assert "SET COMPRESSION" not in script
