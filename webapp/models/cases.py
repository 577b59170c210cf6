"""Case types and their published versions, cases, their events and attachments, the outbox."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webapp.extensions import Model
from webapp.models.accounts import EmailAccount
from webapp.models.groups import WorkGroup
from webapp.models.types import UTCDateTime, utcnow
from webapp.models.user import User


class CaseType(Model):
    """A designed process. `draft` is the definition being edited; cases use published versions."""

    __tablename__ = "case_types"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    prefix: Mapped[str] = mapped_column(String(10), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # The account this type's mail is sent from when a case did not arrive through a listener.
    email_account_id: Mapped[int | None] = mapped_column(
        ForeignKey("email_accounts.id", ondelete="SET NULL"), index=True
    )
    draft: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    email_account: Mapped[EmailAccount | None] = relationship()
    versions: Mapped[list[CaseTypeVersion]] = relationship(
        back_populates="case_type",
        order_by="CaseTypeVersion.number",
        cascade="all, delete-orphan",
    )

    @property
    def latest_version(self) -> CaseTypeVersion | None:
        return self.versions[-1] if self.versions else None


class CaseTypeVersion(Model):
    """A published, immutable definition; every case stays on the version it started with."""

    __tablename__ = "case_type_versions"
    __table_args__ = (UniqueConstraint("case_type_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    case_type_id: Mapped[int] = mapped_column(ForeignKey("case_types.id", ondelete="CASCADE"))
    number: Mapped[int]
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    published_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    case_type: Mapped[CaseType] = relationship(back_populates="versions")
    published_by: Mapped[User | None] = relationship()


class CaseCounter(Model):
    """The next case number of a case type; incremented in the transaction that opens a case,
    so numbers have neither gaps nor duplicates."""

    __tablename__ = "case_counters"

    case_type_id: Mapped[int] = mapped_column(
        ForeignKey("case_types.id", ondelete="CASCADE"), primary_key=True
    )
    next_number: Mapped[int] = mapped_column(Integer, default=1001)


class Case(Model):
    __tablename__ = "cases"
    __table_args__ = (
        UniqueConstraint("case_type_id", "number"),
        # The queue: filters on status / type / stage / assignee, newest activity first, with
        # the id breaking ties for keyset pagination.
        Index("ix_cases_status_updated", "status", "updated_at", "id"),
        Index("ix_cases_type_status_updated", "case_type_id", "status", "updated_at", "id"),
        Index("ix_cases_type_stage_updated", "case_type_id", "stage", "updated_at", "id"),
        Index("ix_cases_status_created", "status", "created_at", "id"),
        Index("ix_cases_assignee_status", "assignee_id", "status", "updated_at"),
        Index("ix_cases_queue_status", "queue", "status", "updated_at"),
        Index("ix_cases_group_status", "group_id", "status", "updated_at"),
        Index("ix_cases_status_deadline", "status", "sla_deadline_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    case_type_id: Mapped[int] = mapped_column(ForeignKey("case_types.id", ondelete="RESTRICT"))
    version_id: Mapped[int] = mapped_column(
        ForeignKey("case_type_versions.id", ondelete="RESTRICT"), index=True
    )
    number: Mapped[int]
    reference: Mapped[str] = mapped_column(String(24), unique=True, insert_sentinel=True)
    subject: Mapped[str] = mapped_column(String(300), default="")
    requester: Mapped[str] = mapped_column(String(320), default="", index=True)
    stage: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(12), default="open")
    resolution: Mapped[str | None] = mapped_column(String(20))
    fields: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Who has approved in the current stage (for approvals that need everyone).
    approvals: Mapped[list[str]] = mapped_column(JSON, default=list)
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    queue: Mapped[str | None] = mapped_column(String(20))  # a work queue (role)
    group_id: Mapped[int | None] = mapped_column(  # a work queue (group)
        ForeignKey("work_groups.id", ondelete="SET NULL")
    )
    approvers: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    stage_entered_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Counts stage entries: an approval request is valid only for the visit it was made for,
    # so a case that leaves a stage and comes back needs new requests.
    stage_visit: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The account the case's mail is sent from: the one it arrived through, else its type's.
    email_account_id: Mapped[int | None] = mapped_column(
        ForeignKey("email_accounts.id", ondelete="SET NULL"), index=True
    )
    sla_goal_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sla_deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    row_version: Mapped[int] = mapped_column(Integer, nullable=False)

    # Every UPDATE checks and bumps row_version: a concurrent change makes it match no row.
    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012 - SQLAlchemy's hook

    case_type: Mapped[CaseType] = relationship()
    version: Mapped[CaseTypeVersion] = relationship()
    assignee: Mapped[User | None] = relationship(foreign_keys=[assignee_id])
    created_by: Mapped[User | None] = relationship(foreign_keys=[created_by_id])
    group: Mapped[WorkGroup | None] = relationship()
    email_account: Mapped[EmailAccount | None] = relationship()
    events: Mapped[list[CaseEvent]] = relationship(
        back_populates="case", order_by="CaseEvent.id", cascade="all, delete-orphan"
    )
    attachments: Mapped[list[CaseAttachment]] = relationship(
        back_populates="case", order_by="CaseAttachment.id", cascade="all, delete-orphan"
    )

    def is_overdue(self, now: datetime) -> bool:
        return (
            self.status == "open"
            and self.sla_deadline_at is not None
            and (self.sla_deadline_at < now)
        )

    def is_past_goal(self, now: datetime) -> bool:
        return self.status == "open" and self.sla_goal_at is not None and self.sla_goal_at < now


class CaseEvent(Model):
    """The audit trail of a case: creation, transitions, approvals, comments, field changes."""

    __tablename__ = "case_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # created / action / fields / comment
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    actor: Mapped[str] = mapped_column(String(320), default="")  # email, or "system"
    channel: Mapped[str] = mapped_column(String(10), default="web")  # web/email/api/system
    action: Mapped[str] = mapped_column(String(100), default="")
    from_stage: Mapped[str] = mapped_column(String(40), default="")
    to_stage: Mapped[str] = mapped_column(String(40), default="")
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    case: Mapped[Case] = relationship(back_populates="events")


class CaseAttachment(Model):
    __tablename__ = "case_attachments"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100), default="application/octet-stream")
    size: Mapped[int]
    data: Mapped[bytes] = mapped_column(LargeBinary)
    uploaded_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    case: Mapped[Case] = relationship(back_populates="attachments")


class OutboundStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for the sender job (or for its next attempt)
    SENDING = "sending"  # handed to the server right now; left here only by a crash
    SENT = "sent"  # the server accepted it
    FAILED = "failed"  # refused for good, or out of attempts; the server's answer is kept
    HELD = "held"  # stopped by a rate limit; an admin releases or cancels it
    UNCERTAIN = "uncertain"  # a crash while sending: it may have gone out; never resent silently
    CANCELLED = "cancelled"  # an admin decided not to send it


class OutboundKind(enum.StrEnum):
    NOTIFICATION = "notification"  # a stage notification designed on the case type
    APPROVAL_REQUEST = "approval_request"  # asks one approver to decide, carries a reply token
    ANSWER = "answer"  # an answer to an approver's reply (confirmation, already decided, ...)
    ACKNOWLEDGEMENT = "acknowledgement"  # a service email rule's answer to a new request
    ERROR = "error"  # "your message could not be processed"
    COMPOSED = "composed"  # written by a person on the case page


class OutboundMessage(Model):
    """The outbox: a message to send, stored in the transaction that caused it.

    The sender job sends it after the commit. `message_id` is fixed when the row is written,
    so a message sent again after a crash keeps its Message-ID and recipients' mail programs
    can tell the copies apart.
    """

    __tablename__ = "outbound_messages"
    __table_args__ = (
        Index("ix_outbound_status_next_attempt", "status", "next_attempt_at"),
        # The limit per case counts a case's messages of the last hour from this index alone.
        Index("ix_outbound_case_created", "case_id", "created_at", "id"),
        # A send job with room takes its accounts' other pending messages in id order.
        Index("ix_outbound_account_status_id", "account_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # Indexed by ix_outbound_case_created, whose first column it is.
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    # Indexed by ix_outbound_account_status_id, whose first column it is.
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("email_accounts.id", ondelete="SET NULL")
    )
    kind: Mapped[str] = mapped_column(
        String(20), default=OutboundKind.NOTIFICATION.value, server_default="notification"
    )
    stage: Mapped[str] = mapped_column(String(40), default="")
    recipients: Mapped[list[str]] = mapped_column(JSON, default=list)
    cc: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    subject: Mapped[str] = mapped_column(String(998))
    body: Mapped[str] = mapped_column(Text, default="")
    attach_case_files: Mapped[bool] = mapped_column(Boolean, default=False)
    # Case attachments chosen by hand (composed mail); all of them when attach_case_files.
    attachment_ids: Mapped[list[int]] = mapped_column(JSON, default=list, server_default="[]")
    # Auto-Submitted / X-Auto-Response-Suppress; false only for mail a person wrote.
    automatic: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    message_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    in_reply_to: Mapped[str | None] = mapped_column(String(998))
    references: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    reply_to: Mapped[str] = mapped_column(String(320), default="", server_default="")
    # An approval request's reply token, encrypted with the secret box until the message is
    # sent and erased then: the approval itself keeps only the token's hash.
    token_encrypted: Mapped[str | None] = mapped_column(Text)
    # Indexed by ix_outbound_status_next_attempt, whose first column it is.
    status: Mapped[str] = mapped_column(String(20), default=OutboundStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sending_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The server's last answer (or why nothing could be sent), for the case page and admins.
    last_error: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    case: Mapped[Case | None] = relationship()
    account: Mapped[EmailAccount | None] = relationship()
    created_by: Mapped[User | None] = relationship()
    addressees: Mapped[list[OutboundRecipient]] = relationship(
        back_populates="outbound", cascade="all, delete-orphan"
    )


class OutboundRecipient(Model):
    """One recipient of one outgoing message, for the rate limits per recipient."""

    __tablename__ = "outbound_recipients"
    # The limit per recipient counts an address's messages of the last hour from this index.
    __table_args__ = (
        Index("ix_outbound_recipients_address_sent", "address", "created_at", "outbound_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    outbound_id: Mapped[int] = mapped_column(
        ForeignKey("outbound_messages.id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    outbound: Mapped[OutboundMessage] = relationship(back_populates="addressees")


class ApprovalStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"  # the case left the stage before this approver decided


class Approval(Model):
    """An approval request to one approver for one visit of an approval stage of one case.

    Only the hash of its reply token is stored; the token reaches the approver in the Reply-To
    address and headers of the request, and in the signed Approve / Reject links.
    """

    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("case_id", "stage_visit", "approver"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # Indexed by the unique constraint, whose first column it is.
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    approver: Mapped[str] = mapped_column(String(320))
    stage: Mapped[str] = mapped_column(String(40))
    stage_visit: Mapped[int] = mapped_column(Integer)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("case_type_versions.id", ondelete="RESTRICT")
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(
        String(12), default=ApprovalStatus.PENDING.value, index=True
    )
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    decided_via: Mapped[str] = mapped_column(String(10), default="")  # email / link / web
    comment: Mapped[str] = mapped_column(Text, default="")
    outbound_id: Mapped[int | None] = mapped_column(
        ForeignKey("outbound_messages.id", ondelete="SET NULL")
    )
    inbound_id: Mapped[int | None] = mapped_column(
        ForeignKey("inbound_messages.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    case: Mapped[Case] = relationship()
    outbound: Mapped[OutboundMessage | None] = relationship(foreign_keys=[outbound_id])
