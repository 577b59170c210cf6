"""`flask` commands: users, workers, the scheduler, the mail sandbox, intake and the demo."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import click
from cryptography.fernet import Fernet
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from webapp.extensions import db
from webapp.models import Role

# sysexits.h: a mail server retries delivery on EX_TEMPFAIL and bounces on EX_DATAERR.
EX_DATAERR = 65
EX_TEMPFAIL = 75

users_cli = AppGroup("users", help="Manage users and their API tokens.")
mail_cli = AppGroup("mail", help="Receive mail from a mail server's pipe.")
secrets_cli = AppGroup("secrets", help="Keys for secrets stored in the database.")
demo_cli = AppGroup("demo", help="Demo data for a first look.")


def _read_password(confirm: bool = True) -> str:
    if not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise click.ClickException("no password on standard input")
        return password
    return click.prompt("Password", hide_input=True, confirmation_prompt=confirm)


@users_cli.command("create")
@click.argument("email")
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role]),
    default=Role.WORKER.value,
    show_default=True,
)
@click.option("--name", default="", help="Full name.")
def users_create(email: str, role: str, name: str) -> None:
    """Create a user. The password is read from standard input or asked for."""
    from webapp.services.users import UserError, create_user

    password = _read_password()
    try:
        user = create_user(email, password, role, name=name)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    db.session.commit()
    click.echo(f"Created {user.email} ({user.role}).")


@users_cli.command("token")
@click.argument("email")
@click.option("--name", default="command line", show_default=True, help="What the token is for.")
def users_token(email: str, name: str) -> None:
    """Create an API token for a user and print it (it is shown only once)."""
    from webapp.services.users import find_user, issue_api_token

    user = find_user(email)
    if user is None:
        raise click.ClickException(f"There is no user {email}.")
    _, plaintext = issue_api_token(user, name)
    db.session.commit()
    click.echo(plaintext)


@users_cli.command("list")
def users_list() -> None:
    """List users with their roles."""
    from sqlalchemy import select

    from webapp.models import User

    for user in db.session.scalars(select(User).order_by(User.email)):
        state = "" if user.active else " (inactive)"
        click.echo(f"{user.email}\t{user.role}{state}")


@users_cli.command("password")
@click.argument("email")
def users_password(email: str) -> None:
    """Set a user's password (from standard input or asked for)."""
    from webapp.services.users import UserError, find_user, set_password

    user = find_user(email)
    if user is None:
        raise click.ClickException(f"There is no user {email}.")
    try:
        set_password(user, _read_password())
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    db.session.commit()
    click.echo(f"Password of {user.email} changed.")


@mail_cli.command("ingest")
@click.option(
    "--max-size", type=int, default=None, help="Refuse messages larger than this (bytes)."
)
def mail_ingest(max_size: int | None) -> None:
    """Store one raw message from standard input (for a mail server's pipe transport).

    Exit 0 when stored, 65 when the message is refused, 75 on a temporary failure so that the
    mail server keeps the message and retries.
    """
    from webapp.services.intake import IntakeError, store_inbound

    raw = sys.stdin.buffer.read()
    try:
        inbound = store_inbound(raw, "mta", max_size=max_size)
        db.session.commit()
    except IntakeError as exc:
        click.echo(f"refused: {exc}", err=True)
        sys.exit(EX_DATAERR)
    except (OperationalError, SQLAlchemyError) as exc:
        db.session.rollback()
        click.echo(f"temporary failure, try again later: {type(exc).__name__}", err=True)
        sys.exit(EX_TEMPFAIL)
    click.echo(f"stored inbound message #{inbound.id}")


@secrets_cli.command("generate-key")
def secrets_generate_key() -> None:
    """Print a new key for CASEMAIL_SECRET_KEYS."""
    click.echo(Fernet.generate_key().decode("ascii"))


DEMO_ADMIN = "admin@casemail.test"


@demo_cli.command("seed")
def demo_seed() -> None:
    """Create the demo admin once and print how to sign in."""
    from webapp.services.users import create_user, find_user, verify_password

    password_file = Path(current_app.instance_path) / "demo-admin-password"
    user = find_user(DEMO_ADMIN)
    reset_hint = f"reset it with `flask users password {DEMO_ADMIN}`"
    if user is None:
        password = secrets.token_urlsafe(12)
        create_user(DEMO_ADMIN, password, Role.ADMIN, name="Demo Admin")
        db.session.commit()
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        shown = password
    elif password_file.exists() and verify_password(user, password_file.read_text().strip()):
        shown = password_file.read_text().strip()
    else:
        shown = f"(changed since it was generated; {reset_hint})"
    click.echo(f"Sign in as {DEMO_ADMIN} with password: {shown}")


def register_cli(app: Flask) -> None:
    @app.cli.command("worker")
    @click.option(
        "--queue", "queues", multiple=True, help="Queue to work (repeatable); default: all."
    )
    @click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
    @click.option("--fork", is_flag=True, help="Run each job in a forked child process.")
    def worker_command(queues: tuple[str, ...], burst: bool, fork: bool) -> None:
        """Run a background worker until SIGTERM (the running job finishes first)."""
        from workers.queues import ALL_QUEUES
        from workers.worker import run_worker

        try:
            run_worker(
                current_app._get_current_object(),  # type: ignore[attr-defined]
                queues or ALL_QUEUES,
                burst=burst,
                kind="fork" if fork else "simple",
            )
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None

    @app.cli.command("scheduler")
    def scheduler_command() -> None:
        """Enqueue periodic jobs until SIGTERM."""
        from workers.scheduler import run_scheduler

        run_scheduler(current_app._get_current_object())  # type: ignore[attr-defined]

    @app.cli.command("devmail")
    def devmail_command() -> None:
        """Run the development mail sandbox (SMTP on CASEMAIL_DEV_SMTP_PORT)."""
        if not current_app.config["CASEMAIL_DEV_SANDBOX"]:
            raise click.ClickException(
                "The mail sandbox is for development; it is off (CASEMAIL_DEV_SANDBOX)."
            )
        from workers.devmail import run_devmail

        run_devmail(current_app._get_current_object())  # type: ignore[attr-defined]

    app.cli.add_command(users_cli)
    app.cli.add_command(mail_cli)
    app.cli.add_command(secrets_cli)
    app.cli.add_command(demo_cli)
