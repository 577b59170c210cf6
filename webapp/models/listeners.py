"""What watches mailboxes (EmailListener) and what a message does (ServiceEmailRule)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, BigInteger, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webapp.extensions import Model
from webapp.models.accounts import EmailAccount
from webapp.models.cases import CaseType
from webapp.models.types import UTCDateTime, utcnow

if TYPE_CHECKING:
    from webapp.models.channels import EmailChannel


class AfterProcessing(enum.StrEnum):
    MARK_READ = "mark_read"
    DELETE = "delete"
    MOVE = "move"


class RuleAction(enum.StrEnum):
    CREATE_CASE = "create_case"
    UPDATE_CASE = "update_case"


class ResolvedCasePolicy(enum.StrEnum):
    """What a message for a resolved case does."""

    REOPEN = "reopen"
    NEW_CASE = "new_case"
    REPLY_CLOSED = "reply_closed"


class ServiceEmailRule(Model):
    """What an incoming message does: open a case of a type, or update the case it belongs to."""

    __tablename__ = "service_email_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    action: Mapped[str] = mapped_column(String(20), default=RuleAction.CREATE_CASE.value)
    case_type_id: Mapped[int | None] = mapped_column(
        ForeignKey("case_types.id", ondelete="RESTRICT"), index=True
    )
    # [{"field": name, "source": "header"|"subject_regex"|"body_regex"|"body_key", "value": ...}]
    field_mappings: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # For messages that join an existing case: an optional stage action to run.
    stage_action: Mapped[str] = mapped_column(String(100), default="")
    resolved_policy: Mapped[str] = mapped_column(
        String(20), default=ResolvedCasePolicy.NEW_CASE.value
    )
    send_ack: Mapped[bool] = mapped_column(default=False)
    ack_subject: Mapped[str] = mapped_column(String(300), default="")
    ack_body: Mapped[str] = mapped_column(Text, default="")
    max_attachment_bytes: Mapped[int] = mapped_column(default=10 * 1024 * 1024)
    max_attachments: Mapped[int] = mapped_column(default=20)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    case_type: Mapped[CaseType | None] = relationship()


class EmailListener(Model):
    """Watches one folder of one account; hands each message to a rule or an email channel."""

    __tablename__ = "email_listeners"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("email_accounts.id", ondelete="RESTRICT"), index=True
    )
    folder: Mapped[str] = mapped_column(String(255), default="INBOX")
    message_format: Mapped[str] = mapped_column(String(10), default="both")  # text, html, both
    rule_id: Mapped[int | None] = mapped_column(
        ForeignKey("service_email_rules.id", ondelete="RESTRICT"), index=True
    )
    # Routes each message through a channel instead of one rule; rule_id is then empty.
    channel_id: Mapped[int | None] = mapped_column(
        ForeignKey("email_channels.id", ondelete="RESTRICT"), index=True
    )
    poll_interval_seconds: Mapped[int] = mapped_column(default=60)
    max_batch: Mapped[int] = mapped_column(default=100)
    after_processing: Mapped[str] = mapped_column(
        String(20), default=AfterProcessing.MARK_READ.value
    )
    move_to_folder: Mapped[str] = mapped_column(String(255), default="")
    max_message_bytes: Mapped[int] = mapped_column(default=25 * 1024 * 1024)
    send_error_email: Mapped[bool] = mapped_column(default=False)
    use_idle: Mapped[bool] = mapped_column(default=True)
    enabled: Mapped[bool] = mapped_column(default=True)
    # Where the mailbox was left: IMAP folder identity and the highest UID stored.
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    # Microsoft Graph: the delta link that asks for what changed in the folder since last time.
    graph_delta_link: Mapped[str | None] = mapped_column(Text)
    # Health, shown on the listener page.
    last_poll_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_poll_ok: Mapped[bool | None] = mapped_column()
    last_error: Mapped[str] = mapped_column(Text, default="")
    processed_count: Mapped[int] = mapped_column(default=0)
    quarantined_count: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    account: Mapped[EmailAccount] = relationship()
    rule: Mapped[ServiceEmailRule | None] = relationship()
    channel: Mapped[EmailChannel | None] = relationship()
