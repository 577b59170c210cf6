"""`flask` commands: users, workers, the scheduler, the mail sandbox, intake and the demo."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import BinaryIO

import click
from cryptography.fernet import Fernet
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from webapp.extensions import db
from webapp.ids import MAX_ID, is_id
from webapp.models import Role
from webapp.services.listeners import MAX_MESSAGE_BYTES

# sysexits.h: a mail server retries delivery on EX_TEMPFAIL and bounces on EX_DATAERR.
EX_DATAERR = 65
EX_TEMPFAIL = 75
# An ID argument: a number that cannot be a row's ID is a usage error, not a database error.
ROW_ID = click.IntRange(1, MAX_ID)

users_cli = AppGroup("users", help="Manage users and their API tokens.")
mail_cli = AppGroup("mail", help="Receive mail from a mail server's pipe.")
secrets_cli = AppGroup("secrets", help="Keys for secrets stored in the database.")
demo_cli = AppGroup("demo", help="Demo data for a first look.")
config_cli = AppGroup("config", help="Configuration as code: export and import YAML.")
accounts_cli = AppGroup("accounts", help="Email accounts: test their connectivity.")
listeners_cli = AppGroup("listeners", help="Email listeners: list them, poll one now.")
outbox_cli = AppGroup("outbox", help="Outgoing mail: list the outbox, send what is due now.")


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
    "--max-size",
    type=click.IntRange(0, MAX_MESSAGE_BYTES),
    default=None,
    help="Refuse messages larger than this (bytes, at most 1 GiB as for a listener).",
)
@click.option(
    "--listener",
    "listener_id",
    type=int,
    default=None,
    help="The listener (and so the rule) that handles the message; ingests it after storing.",
)
def mail_ingest(max_size: int | None, listener_id: int | None) -> None:
    """Store one raw message from standard input (for a mail server's pipe transport).

    Exit 0 when stored, 65 when the message is refused, 75 on a temporary failure so that the
    mail server keeps the message and retries.
    """
    from webapp.models import EmailListener
    from webapp.services.intake import (
        IntakeError,
        check_size,
        store_for_listener,
        store_inbound,
    )

    if sys.stdin is None:  # started with standard input closed: no message to read
        click.echo("refused: there is no message: standard input is closed", err=True)
        sys.exit(EX_DATAERR)
    stdin = sys.stdin.buffer
    try:
        listener = None
        if listener_id is not None:
            # A number that cannot be an ID names no listener; the database is not asked.
            if is_id(listener_id):
                listener = db.session.get(EmailListener, listener_id)
            if listener is None:
                _read_message(stdin, 0)  # to its end, keeping nothing of it
                click.echo(f"refused: there is no listener with the ID {listener_id}", err=True)
                sys.exit(EX_DATAERR)
        limit = listener.max_message_bytes if listener is not None else max_size
        db.session.rollback()  # no transaction left open while the mail server writes
        raw, size = _read_message(stdin, limit)
        check_size(size, limit)  # the whole message's size: `raw` stops past the limit
        if listener is not None:
            inbound = store_for_listener(raw, "mta", listener)
        else:
            inbound = store_inbound(raw, "mta", max_size=max_size)
        db.session.commit()
    except IntakeError as exc:
        click.echo(f"refused: {exc}", err=True)
        sys.exit(EX_DATAERR)
    except (OperationalError, SQLAlchemyError) as exc:
        db.session.rollback()
        _read_message(stdin, 0)  # what is left of it, unread if the lookup failed
        click.echo(f"temporary failure, try again later: {type(exc).__name__}", err=True)
        sys.exit(EX_TEMPFAIL)
    click.echo(f"stored inbound message #{inbound.id}")
    if listener is not None:
        from redis.exceptions import RedisError

        from workers.inbound import enqueue_ingest

        try:
            enqueue_ingest([inbound.id])
        except RedisError:
            # Stored is what counts for the mail server: the reconciler enqueues it later.
            click.echo("queued for the reconciler: the job queue is unavailable", err=True)


def _read_message(stream: BinaryIO, limit: int | None) -> tuple[bytes, int]:
    """The message on `stream` and its size. Past `limit` bytes the rest is read and counted
    but not kept, so that an oversized message cannot fill the memory and the mail server,
    which is still writing it, gets the refusal rather than a broken pipe."""
    if limit is None:
        raw = stream.read()
        return raw, len(raw)
    raw = stream.read(limit + 1)
    size = len(raw)
    while chunk := stream.read(1024 * 1024):
        size += len(chunk)
    return raw, size


@mail_cli.command("replay")
@click.argument("inbound_id", type=ROW_ID)
def mail_replay(inbound_id: int) -> None:
    """Ingest a quarantined message again and print what it did."""
    from webapp.services.ingest import IngestError, replay

    try:
        inbound = replay(inbound_id)
    except IngestError as exc:
        db.session.rollback()
        raise click.ClickException(str(exc)) from None
    db.session.commit()
    click.echo(f"#{inbound.id}: {inbound.status}. {inbound.status_reason}")
    if inbound.status == "quarantined":
        sys.exit(1)


@secrets_cli.command("generate-key")
def secrets_generate_key() -> None:
    """Print a new key for CASEMAIL_SECRET_KEYS."""
    click.echo(Fernet.generate_key().decode("ascii"))


@secrets_cli.command("rotate")
def secrets_rotate() -> None:
    """Re-encrypt every stored secret under the first key of CASEMAIL_SECRET_KEYS."""
    from webapp.secretbox import SecretError
    from webapp.services.accounts import rotate_account_secrets

    try:
        count = rotate_account_secrets()
    except SecretError as exc:
        db.session.rollback()
        raise click.ClickException(f"Nothing was changed: {exc}.") from None
    db.session.commit()
    click.echo(f"Re-encrypted {count} stored secret(s) under the newest key.")


@accounts_cli.command("test")
@click.argument("account_id")
@click.option("--sender", "sides", flag_value="sender", help="Test only the sender.")
@click.option("--receiver", "sides", flag_value="receiver", help="Test only the receiver.")
def accounts_test(account_id: str, sides: str | None) -> None:
    """Test an account's sender and receiver (or one of them); exit 1 when a test fails."""
    from webapp.services.accounts import check_connectivity, find_account

    account = find_account(account_id)
    if account is None:
        raise click.ClickException(f"There is no email account with the ID {account_id}.")
    failed = False
    for side in (sides,) if sides else ("sender", "receiver"):
        result = check_connectivity(account, side)
        click.echo(f"{side.capitalize()}: {'OK' if result.ok else 'FAILED'} {result.message}")
        failed = failed or not result.ok
    db.session.commit()
    if failed:
        sys.exit(1)


DEMO_ADMIN = "admin@casemail.test"


@demo_cli.command("seed")
def demo_seed() -> None:
    """Create the demo admin, case type and mailbox once and print how to sign in."""
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
    click.echo(_seed_demo_case_type())
    for line in _seed_demo_mail():
        click.echo(line)


DEMO_ACCOUNT = "demo-mailbox"
DEMO_RULE = "Demo expense requests"
DEMO_LISTENER = "Demo intake"
# Lines such as "Amount: 120.50" in a plain email fill the Expense approval fields.
DEMO_MAPPINGS = [
    {"field": "amount", "source": "body_key", "value": "Amount"},
    {"field": "expense_date", "source": "body_key", "value": "Date"},
    {"field": "category", "source": "body_key", "value": "Category"},
    {"field": "manager_email", "source": "body_key", "value": "Approver"},
    {"field": "notes", "source": "body_key", "value": "Notes"},
]


def _seed_demo_mail() -> list[str]:
    """Mail for the demo, made once: an account sending through the mail sandbox, the
    Expense approval type's sending account, a rule opening its cases from plain email and
    a listener the sandbox delivers to (never polled: the sandbox is not an IMAP server)."""
    from sqlalchemy import select

    from webapp.casetypes.starters import EXPENSE_APPROVAL
    from webapp.models import EmailListener, RuleAction, ServiceEmailRule
    from webapp.services.accounts import AccountError, find_account, save_account
    from webapp.services.casetypes import find_case_type
    from webapp.services.listeners import ListenerError, save_listener
    from webapp.services.rules import RuleData, RuleError, save_rule

    config = current_app.config
    intake = config["CASEMAIL_DEV_INTAKE"]
    case_type = find_case_type(EXPENSE_APPROVAL.name)
    if not config["CASEMAIL_DEV_SANDBOX"] or not intake or case_type is None:
        return []
    address = intake[0]
    host, port = config["CASEMAIL_DEV_SMTP_HOST"], config["CASEMAIL_DEV_SMTP_PORT"]
    lines: list[str] = []
    try:
        account = find_account(DEMO_ACCOUNT)
        if account is None:
            account = save_account(
                None,
                DEMO_ACCOUNT,
                {
                    "name": "Demo mailbox",
                    "description": (
                        "Sends through the development mail sandbox. Mail to "
                        f"{address} reaches the listener {DEMO_LISTENER} straight from the "
                        "sandbox, so the receiver below is never polled."
                    ),
                    "smtp_email": address,
                    "smtp_display_name": "Casemail demo",
                    "smtp_host": host,
                    "smtp_port": port,
                    "smtp_security": "none",
                    "smtp_auth": "none",
                    "receiver_protocol": "imap",
                    "receiver_host": host,
                    "receiver_port": 143,
                    "receiver_security": "none",
                    "receiver_use_sender_credentials": False,
                    "receiver_user_id": address,
                },
                {"receiver_password": secrets.token_urlsafe(12)},
            )
            lines.append(f"Demo mailbox: {address}, sending through the sandbox at {host}:{port}")
        if case_type.email_account_id is None:
            case_type.email_account = account
        rule = db.session.scalar(select(ServiceEmailRule).where(ServiceEmailRule.name == DEMO_RULE))
        if rule is None:
            rule = save_rule(
                None,
                RuleData(
                    name=DEMO_RULE,
                    action=RuleAction.CREATE_CASE.value,
                    case_type_id=case_type.id,
                    mappings=[dict(m) for m in DEMO_MAPPINGS],
                    # A complete request goes straight to its approver; one missing a field
                    # waits in Submission for a person.
                    stage_action="submit",
                    send_ack=True,
                    ack_subject="We have your request: {{ subject }}",
                    ack_body=(
                        "Your expense request is case {{ case_id }}. "
                        "We will let you know when it has been decided."
                    ),
                ),
            )
        listener = db.session.scalar(
            select(EmailListener).where(EmailListener.name == DEMO_LISTENER)
        )
        if listener is None:
            save_listener(
                None,
                {
                    "name": DEMO_LISTENER,
                    "account_id": account.id,
                    "folder": "INBOX",
                    "message_format": "both",
                    "rule_id": rule.id,
                    "channel_id": None,
                    "poll_interval_seconds": 60,
                    "max_batch": 100,
                    "after_processing": "mark_read",
                    "move_to_folder": "",
                    "max_message_bytes": 25 * 1024 * 1024,
                    "send_error_email": False,
                    "use_idle": False,
                    # The sandbox hands it its mail; polling would find no server.
                    "enabled": False,
                },
            )
            lines.append(
                f"Demo intake: mail to {address} opens an {case_type.name} case; "
                "try it from /dev/mailbox"
            )
    except (AccountError, RuleError, ListenerError) as exc:
        db.session.rollback()
        raise click.ClickException(f"The demo mailbox was not set up: {exc}") from None
    db.session.commit()
    return lines


def _seed_demo_case_type() -> str:
    """Publish the "Expense approval" starter once (kept as it is if it already exists)."""
    from webapp.casetypes.starters import EXPENSE_APPROVAL
    from webapp.services.casetypes import create_case_type, find_case_type, publish

    existing = find_case_type(EXPENSE_APPROVAL.name)
    if existing is not None:
        return f"Demo case type: {existing.name} ({existing.prefix}-…)"
    case_type = create_case_type(
        EXPENSE_APPROVAL.name,
        EXPENSE_APPROVAL.prefix,
        EXPENSE_APPROVAL.description,
        starter=EXPENSE_APPROVAL.slug,
    )
    publish(case_type, None)
    db.session.commit()
    return f"Demo case type: {case_type.name} ({case_type.prefix}-…), published"


@config_cli.command("export")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write here, not stdout.")
def config_export(output: str | None) -> None:
    """Write groups, email accounts (without secrets), case types, rules, channels and
    listeners as YAML."""
    from webapp.services.configio import dump_yaml, export_config

    text = dump_yaml(export_config())
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"Wrote {output}.")
    else:
        click.echo(text, nl=False)


@config_cli.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Check and report, change nothing.")
def config_import(file: str, dry_run: bool) -> None:
    """Create or update what FILE describes; importing the same file twice changes nothing."""
    from webapp.services.configio import ConfigError, import_config

    try:
        report = import_config(Path(file).read_text(encoding="utf-8"), file)
    except ConfigError as exc:
        db.session.rollback()
        raise click.ClickException("the file was not imported:\n" + str(exc)) from None
    except UnicodeDecodeError:
        raise click.ClickException(f"{file}: the file is not UTF-8 text.") from None
    if dry_run:
        db.session.rollback()
    else:
        db.session.commit()
    for line in report.changes:
        click.echo(line)
    if dry_run:
        click.echo("Dry run: nothing was changed.")


@listeners_cli.command("list")
def listeners_list() -> None:
    """List the listeners with their health."""
    from webapp.services.listeners import list_listeners, listener_health

    rows = list_listeners()
    if not rows:
        click.echo("No listeners.")
    for listener in rows:
        health = listener_health(listener)
        state = "disabled" if not listener.enabled else "ok" if health.healthy else "unhealthy"
        last = (
            listener.last_poll_at.strftime("%Y-%m-%d %H:%M:%S UTC")
            if listener.last_poll_at
            else "never"
        )
        failed = " (last poll failed)" if listener.last_poll_ok is False else ""
        click.echo(
            f"{listener.id}\t{listener.name}\t{listener.account.account_id}/{listener.folder}\t"
            f"{state}\tlast poll {last}{failed}\tprocessed {listener.processed_count}\t"
            f"quarantined {listener.quarantined_count}"
        )


@listeners_cli.command("run")
@click.argument("listener_id", type=ROW_ID)
@click.option("--once", is_flag=True, required=True, help="Poll once and exit (required).")
def listeners_run(listener_id: int, once: bool) -> None:
    """Poll one listener now, synchronously, and print what it did."""
    from redis.exceptions import RedisError

    from webapp.services.receiving import ReceivingError
    from workers.listeners import PollBusy, UnknownListener, run_poll

    try:
        result = run_poll(listener_id)
    except (UnknownListener, ReceivingError) as exc:
        db.session.rollback()
        raise click.ClickException(str(exc)) from None
    except PollBusy:
        raise click.ClickException(
            f"Listener {listener_id} is being polled by a worker right now; try again shortly."
        ) from None
    except RedisError as exc:
        # A poll runs only under its listener's lock, which lives in Redis.
        db.session.rollback()
        raise click.ClickException(
            f"The job queue (Redis) is unavailable, so listener {listener_id} cannot be polled "
            f"now: {exc}"
        ) from None
    click.echo(result.summary())
    for error in result.errors:
        click.echo(f"error: {error}", err=True)
    if not result.ok:
        sys.exit(1)


@listeners_cli.command("watch")
def listeners_watch() -> None:
    """Watch IMAP listeners with IDLE and enqueue a poll as soon as mail arrives (until SIGTERM)."""
    import signal
    import threading

    from workers.listeners import run_idle_watchers

    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    click.echo("Watching IMAP listeners with IDLE; polls stay scheduled as well.")
    run_idle_watchers(current_app._get_current_object(), stop)  # type: ignore[attr-defined]


@outbox_cli.command("send")
def outbox_send() -> None:
    """Send every message that is due now, here and now; one line per message."""
    from webapp.models.types import utcnow
    from webapp.services.outbox import due_ids, mark_uncertain
    from workers.outbound import BATCH, send_outbound

    now = utcnow()
    marked = mark_uncertain(now)
    db.session.commit()
    if marked:
        click.echo(f"{marked} message(s) left sending by a stopped sender are now uncertain.")
    ids = due_ids(now, limit=100_000)
    db.session.rollback()
    sent = 0
    for start in range(0, len(ids), BATCH):
        for result in send_outbound(ids[start : start + BATCH]):
            click.echo(f"{result.outbound_id}: {result.status} {result.detail}".rstrip())
            sent += result.status == "sent"
    # A batch with room also takes messages that came due meanwhile: count what was sent.
    click.echo(f"Sent {sent} message(s); due at the start: {len(ids)}.")


@outbox_cli.command("list")
@click.option(
    "--status",
    type=click.Choice(["pending", "sending", "sent", "failed", "held", "uncertain", "cancelled"]),
    help="Only messages with this status.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_ID),
    default=50,
    show_default=True,
    help="At most this many, newest first.",
)
def outbox_list(status: str | None, limit: int) -> None:
    """List outgoing messages, newest first."""
    from sqlalchemy import select

    from webapp.models import OutboundMessage

    stmt = select(OutboundMessage).order_by(OutboundMessage.id.desc()).limit(limit)
    if status:
        stmt = stmt.where(OutboundMessage.status == status)
    rows = db.session.scalars(stmt).all()
    for row in rows:
        to = ", ".join([*row.recipients, *row.cc])
        line = f"{row.id}  {row.status:<9}  {row.created_at:%Y-%m-%d %H:%M}  {to}  {row.subject}"
        click.echo(line + (f"  [{row.last_error}]" if row.last_error else ""))
    if not rows:
        click.echo("No messages.")


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
    app.cli.add_command(config_cli)
    app.cli.add_command(accounts_cli)
    app.cli.add_command(listeners_cli)
    app.cli.add_command(outbox_cli)
