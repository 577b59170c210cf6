"""Case types and their published versions, cases, their events and attachments, the outbox."""

from __future__ import annotations

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
    draft: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

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
    reference: Mapped[str] = mapped_column(String(24), unique=True)
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


class OutboundMessage(Model):
    """The outbox: a message to send, stored in the transaction that caused it.

    Stage entry notifications wait here with status "pending" until sending exists.
    """

    __tablename__ = "outbound_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int | None] = mapped_column(
        ForeignKey("cases.id", ondelete="CASCADE"), index=True
    )
    stage: Mapped[str] = mapped_column(String(40), default="")
    recipients: Mapped[list[str]] = mapped_column(JSON, default=list)
    subject: Mapped[str] = mapped_column(String(998))
    body: Mapped[str] = mapped_column(Text, default="")
    attach_case_files: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    case: Mapped[Case | None] = relationship()
