"""`flask db upgrade` builds an empty database that matches the models, on both databases."""

from __future__ import annotations

import click
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


BEFORE_REBUILDS = "7b3c5d9e2a41"  # cases, their timeline, files and mail; no table rebuilt yet

# A case with one of each row that points at it, as that revision's schema stores them.
_CASE_WITH_ITS_ROWS = [
    "INSERT INTO case_types (id, name, prefix, description, draft, created_at, updated_at) "
    "VALUES (1, 'Expense', 'EXP', '', '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "INSERT INTO case_type_versions (id, case_type_id, number, definition, published_at) "
    "VALUES (1, 1, 1, '{}', CURRENT_TIMESTAMP)",
    "INSERT INTO cases (id, case_type_id, version_id, number, reference, subject, requester, "
    "stage, status, fields, approvals, approvers, created_at, updated_at, stage_entered_at, "
    "row_version) VALUES (1, 1, 1, 1, 'EXP-1', 'Trip', 'ann@example.com', 'review', 'open', "
    "'{}', '{}', '[]', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 1)",
    "INSERT INTO case_events (case_id, kind, actor, channel, action, from_stage, to_stage, "
    "comment, created_at) VALUES (1, 'created', 'ann@example.com', 'email', '', '', 'review', "
    "'the first entry', CURRENT_TIMESTAMP)",
    "INSERT INTO case_attachments (case_id, filename, content_type, size, data, created_at) "
    "VALUES (1, 'receipt.pdf', 'application/pdf', 3, :pdf, CURRENT_TIMESTAMP)",
    "INSERT INTO outbound_messages (case_id, stage, recipients, subject, body, "
    "attach_case_files, status, created_at) VALUES (1, 'review', '[\"ann@example.com\"]', "
    "'Received', 'We have it.', FALSE, 'sent', CURRENT_TIMESTAMP)",
]


@both_databases
def test_upgrades_that_rebuild_a_table_keep_the_rows_that_point_at_it(app_settings, redis_client):
    """SQLite changes a table's constraints by copying it to a new table and dropping the old
    one, and with foreign keys enforced that drop deletes every row pointing at the old table
    (ON DELETE CASCADE): a case's timeline, files and mail. Upgrading keeps them all."""
    app = create_app(app_settings)
    with app.app_context():
        upgrade(revision=BEFORE_REBUILDS)
        for statement in _CASE_WITH_ITS_ROWS:
            db.session.execute(text(statement), {"pdf": b"%!P"})
        db.session.commit()
        upgrade()
        counts = {
            table: db.session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: S608
            for table in ("cases", "case_events", "case_attachments", "outbound_messages")
        }
        assert counts == {
            "cases": 1,
            "case_events": 1,
            "case_attachments": 1,
            "outbound_messages": 1,
        }
        comment = db.session.execute(text("SELECT comment FROM case_events")).scalar_one()
        assert comment == "the first entry"
        if db.engine.dialect.name == "sqlite":
            # The app's own connections still enforce foreign keys after a migration.
            db.session.remove()
            db.engine.dispose()
            assert db.session.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
        db.session.remove()
        db.engine.dispose()


def test_an_upgrade_stops_with_a_clear_message_when_rows_point_at_nothing(
    app_settings, redis_client
):
    """SQLite checks the references only once the migrations are done (they run with foreign
    keys off): a timeline entry whose case is gone is named, not left behind silently."""
    app = create_app(app_settings)
    with app.app_context():
        upgrade(revision=BEFORE_REBUILDS)
        for statement in _CASE_WITH_ITS_ROWS[:3]:
            db.session.execute(text(statement))
        db.session.commit()
        db.session.execute(text("PRAGMA foreign_keys=OFF"))  # before a transaction's first write
        db.session.execute(text(_CASE_WITH_ITS_ROWS[3].replace("VALUES (1,", "VALUES (99,")))
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
        with pytest.raises(click.ClickException, match=r"1 row\(s\) .*\(case_events -> cases\)"):
            upgrade()
        db.session.remove()
        db.engine.dispose()
