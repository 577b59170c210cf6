"""Email listeners: saving with validation, and their health."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from webapp.extensions import db
from webapp.mail.outbound import HeaderValueError, header_text
from webapp.models import (
    AfterProcessing,
    EmailAccount,
    EmailChannel,
    EmailListener,
    InboundMessage,
    InboundStatus,
    ServiceEmailRule,
)
from webapp.models.types import utcnow
from webapp.services.turns import hold_row

# No mail server names a folder with line breaks or other control characters: such a name
# is a paste gone wrong, and would only fail at every poll.
_NO_CONTROL = "A folder name has no line breaks or other control characters."

MESSAGE_FORMATS = ("text", "html", "both")
MIN_INTERVAL, MAX_INTERVAL = 10, 86_400
MIN_BATCH, MAX_BATCH = 1, 1_000
MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES = 1_024, 1_024 * 1_024 * 1_024
# A listener that has not polled for this many of its intervals is shown as unhealthy.
UNHEALTHY_AFTER_INTERVALS = 3

FIELDS = (
    "name",
    "account_id",
    "folder",
    "message_format",
    "rule_id",
    "channel_id",
    "poll_interval_seconds",
    "max_batch",
    "after_processing",
    "move_to_folder",
    "max_message_bytes",
    "send_error_email",
    "use_idle",
    "enabled",
)
FLAGS = ("send_error_email", "use_idle", "enabled")


class ListenerError(ValueError):
    """Saving a listener was refused; `errors` maps each field to a sentence fit to show."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__(next(iter(self.errors.values())))


@dataclass(frozen=True)
class ListenerHealth:
    healthy: bool
    # Seconds the oldest stored message has been waiting to be ingested; None when none waits.
    lag_seconds: int | None
    waiting: int
    quarantined: int


def new_listener() -> EmailListener:
    """An unsaved listener holding the defaults the form starts from."""
    return EmailListener(
        folder="INBOX",
        message_format="both",
        poll_interval_seconds=60,
        max_batch=100,
        after_processing=AfterProcessing.MARK_READ.value,
        move_to_folder="",
        max_message_bytes=25 * 1024 * 1024,
        send_error_email=False,
        use_idle=True,
        enabled=True,
    )


def listener_values(listener: EmailListener) -> dict[str, Any]:
    """The listener's fields as listener_errors and save_listener take them."""
    return {field: getattr(listener, field) for field in FIELDS}


def list_listeners() -> list[EmailListener]:
    return list(db.session.scalars(select(EmailListener).order_by(EmailListener.name)))


def _number(
    errors: dict[str, str], values: Mapping[str, Any], name: str, low: int, high: int, what: str
) -> None:
    value = values.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        errors[name] = f"The {what} is a whole number from {low:,} to {high:,}."


def listener_errors(listener: EmailListener | None, values: Mapping[str, Any]) -> dict[str, str]:
    """What save_listener would refuse, a sentence per field; empty when it would save."""
    errors: dict[str, str] = {}
    name = values.get("name") or ""
    if not name or len(name) > 100:
        errors["name"] = "Enter a name of at most 100 characters."
    else:
        same = db.session.scalar(select(EmailListener).where(EmailListener.name == name))
        if same is not None and same is not listener:
            errors["name"] = f"A listener named {name} already exists."
    account = db.session.get(EmailAccount, values.get("account_id") or 0)
    if account is None:
        errors["account_id"] = "Choose an email account from the list."
    elif account.receiver_protocol not in ("imap", "pop3", "graph"):
        errors["account_id"] = f"The account {account.account_id} has no receiver to poll."
    pop3 = account is not None and account.receiver_protocol == "pop3"
    folder = values.get("folder") or ""
    if not folder or len(folder) > 255:
        errors["folder"] = "Enter the folder to watch (at most 255 characters)."
    elif _has_breaks(folder):
        errors["folder"] = _NO_CONTROL
    elif pop3 and folder.upper() != "INBOX":
        errors["folder"] = "A POP3 account has only one folder: INBOX."
    if values.get("message_format") not in MESSAGE_FORMATS:
        errors["message_format"] = "Choose text, HTML or both."
    rule_id = values.get("rule_id")
    if rule_id is not None and db.session.get(ServiceEmailRule, rule_id) is None:
        errors["rule_id"] = "Choose a service email rule from the list."
    channel_id = values.get("channel_id")
    if channel_id is not None and db.session.get(EmailChannel, channel_id) is None:
        errors["channel_id"] = "Choose an email channel from the list."
    elif channel_id is not None and rule_id is not None:
        errors["channel_id"] = "Route to a rule or to a channel, not both: leave one empty."
    _number(errors, values, "poll_interval_seconds", MIN_INTERVAL, MAX_INTERVAL, "interval")
    _number(errors, values, "max_batch", MIN_BATCH, MAX_BATCH, "batch size")
    _number(errors, values, "max_message_bytes", MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES, "size limit")
    after = values.get("after_processing")
    move_to = values.get("move_to_folder") or ""
    if after not in {a.value for a in AfterProcessing}:
        errors["after_processing"] = "Choose mark as read, delete or move to a folder."
    elif after == AfterProcessing.MOVE.value:
        if pop3:
            errors["after_processing"] = (
                "POP3 has no folders to move to: choose leave on the server or delete."
            )
        elif not move_to:
            errors["move_to_folder"] = "Enter the folder to move processed messages to."
        elif same_folder(move_to, folder):
            errors["move_to_folder"] = "Choose another folder than the one watched."
        elif len(move_to) > 255:
            errors["move_to_folder"] = "A folder name has at most 255 characters."
        elif _has_breaks(move_to):
            errors["move_to_folder"] = _NO_CONTROL
    return errors


def _has_breaks(name: str) -> bool:
    """Whether `name` holds what no single line of text may (the check of header values)."""
    try:
        header_text("A folder name", name)
    except HeaderValueError:
        return True
    return False


def same_folder(one: str, other: str) -> bool:
    """Whether two IMAP folder names name one folder: INBOX in any case is always INBOX
    (RFC 3501); servers tell other names apart by case."""
    return one == other or one.upper() == other.upper() == "INBOX"


def save_listener(listener: EmailListener | None, values: Mapping[str, Any]) -> EmailListener:
    """Create (listener None) or update a listener from field values.

    Raises ListenerError with a sentence per refused field; nothing is changed then.
    """
    errors = listener_errors(listener, values)
    if errors:
        raise ListenerError(errors)
    if listener is None:
        listener = new_listener()
        db.session.add(listener)
    folder_before = (listener.account_id, listener.folder)
    for name in FIELDS:
        value = values.get(name)
        setattr(listener, name, bool(value) if name in FLAGS else value)
    if values.get("after_processing") != AfterProcessing.MOVE.value:
        listener.move_to_folder = ""
    if folder_before != (listener.account_id, listener.folder):
        # Another mailbox: where the old one was left says nothing about the new one.
        listener.uidvalidity = None
        listener.last_uid = 0
        listener.graph_delta_link = None
    db.session.flush()
    return listener


class ListenerInUse(ValueError):
    """Deleting a listener was refused: messages it stored still wait to be ingested."""


def delete_listener(listener: EmailListener) -> None:
    """Delete a listener whose stored messages have all been ingested; raises ListenerInUse.
    The messages stay, without their listener. One still waiting would be left with no rule to
    ingest it through, so the listener stays until the workers are done with them."""
    # A poll or an intake storing a message for it right now is waited for, and counted.
    hold_row(EmailListener, listener.id)
    waiting = db.session.scalar(
        select(func.count(InboundMessage.id)).where(
            InboundMessage.listener_id == listener.id,
            InboundMessage.status == InboundStatus.RECEIVED.value,
        )
    )
    if waiting:
        raise ListenerInUse(
            f"{waiting} message{'s' if waiting != 1 else ''} this listener stored "
            f"{'are' if waiting != 1 else 'is'} still waiting to be ingested. Disable the "
            "listener, and delete it once the workers have ingested them."
        )
    db.session.delete(listener)
    db.session.flush()


def listener_health(listener: EmailListener, now: datetime | None = None) -> ListenerHealth:
    """Whether the listener polls as often as it should, and how far ingesting lags behind."""
    now = now or utcnow()
    overdue = timedelta(seconds=listener.poll_interval_seconds * UNHEALTHY_AFTER_INTERVALS)
    last = listener.last_poll_at or listener.created_at
    healthy = not listener.enabled or (last is not None and now - last <= overdue)
    waiting, oldest = db.session.execute(
        select(func.count(InboundMessage.id), func.min(InboundMessage.received_at)).where(
            InboundMessage.listener_id == listener.id,
            InboundMessage.status == InboundStatus.RECEIVED.value,
        )
    ).one()
    lag = int((now - oldest).total_seconds()) if oldest is not None else None
    return ListenerHealth(
        healthy=healthy,
        lag_seconds=lag,
        waiting=int(waiting),
        quarantined=listener.quarantined_count,
    )
