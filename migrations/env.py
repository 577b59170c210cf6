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
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Only outside a transaction does SQLite take this; commit ends the one just begun.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            context.configure(
                connection=connection, target_metadata=target_db.metadata, **conf_args
            )
            with context.begin_transaction():
                context.run_migrations()
                if sqlite:
                    _check_references(connection)
        finally:
            if sqlite:
                # Not back to the pool with foreign keys off: the next connection is a new
                # one, with the app's settings.
                connection.invalidate()


def _check_references(connection) -> None:
    """Stop when rows point at rows that do not exist, naming the tables."""
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        tables = ", ".join(sorted({f"{row[0]} -> {row[2]}" for row in broken}))
        raise click.ClickException(
            f"After the migration {len(broken)} row(s) point at rows that do not exist "
            f"({tables}). The upgrade stopped; restore the copy of the database taken before it."
        )


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
