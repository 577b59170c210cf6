"""Alembic environment for Flask-Migrate: the app's engine and metadata, batch mode for SQLite.

SQLite cannot change a table's constraints in place: batch mode copies the table to a new one
and drops the old. With foreign keys enforced, as the app's connections have them, that drop
deletes every row that points at the table with ON DELETE CASCADE (a case's whole timeline when
`cases` is rebuilt), or fails on ON DELETE RESTRICT. So migrations run on SQLite with foreign
keys off, as SQLite's own procedure for schema changes has it, and check every reference once
they are done.
"""

import logging
from logging.config import fileConfig

import click
from alembic import context
from flask import current_app

config = context.config
if config.config_file_name is not None:
    # Keep the app's own loggers working when migrations run inside it.
    fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger("alembic.env")

target_db = current_app.extensions["migrate"].db
engine = target_db.engine
config.set_main_option(
    "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
)
# SQLite databases that live in their one connection, which must not be thrown away.
IN_MEMORY = (None, "", ":memory:")


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (`flask db upgrade --sql`)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_db.metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    def process_revision_directives(context, revision, directives):
        # An autogenerate run that finds no change writes no empty migration file.
        if getattr(config.cmd_opts, "autogenerate", False):
            script = directives[0]
            if script.upgrade_ops.is_empty():
                directives[:] = []
                logger.info("No changes in schema detected.")

    conf_args = dict(current_app.extensions["migrate"].configure_args)
    conf_args.setdefault("process_revision_directives", process_revision_directives)

    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite" and engine.url.database not in IN_MEMORY
        applied: list[str] = []
        if sqlite:
            # Only outside a transaction does SQLite take this. Then commit ends the transaction
            # these statements began, which Alembic would otherwise take as the caller's own
            # and leave uncommitted.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            still_on = connection.exec_driver_sql("PRAGMA foreign_keys").scalar()
            connection.commit()
            if still_on:
                raise click.ClickException("SQLite kept its foreign keys on; nothing was migrated.")
            conf_args.setdefault(
                "on_version_apply", lambda step, **_: applied.append(step.up_revision_id or "")
            )
        try:
            context.configure(
                connection=connection, target_metadata=target_db.metadata, **conf_args
            )
            with context.begin_transaction():
                context.run_migrations()
            if applied:
                _check_references(connection, applied)
        finally:
            if sqlite:
                # Not back to the pool with foreign keys off: the next connection is a new
                # one, with the app's settings.
                connection.invalidate()


def _check_references(connection, applied: list[str]) -> None:
    """Fail, naming the tables, when rows point at rows that do not exist after `applied`."""
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        tables = ", ".join(sorted({f"{row[0]} -> {row[2]}" for row in broken}))
        raise click.ClickException(
            f"After migrating through {', '.join(applied)}, {len(broken)} row(s) point at rows "
            f"that do not exist ({tables}). Restore the copy of the database taken before the "
            "upgrade, or remove those rows."
        )


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
