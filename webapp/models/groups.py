"""Work-queue groups: named sets of users that stages can route cases to."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, ForeignKey, String, Table
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webapp.extensions import Model
from webapp.models.types import UTCDateTime, utcnow
from webapp.models.user import User

work_group_members = Table(
    "work_group_members",
    Model.metadata,
    Column("group_id", ForeignKey("work_groups.id", ondelete="CASCADE"), primary_key=True),
    # Indexed on its own for "the groups of this user", which every queue page asks.
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True),
)


class WorkGroup(Model):
    """A work queue of named members; case type definitions refer to it by name."""

    __tablename__ = "work_groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(60), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    members: Mapped[list[User]] = relationship(secondary=work_group_members, order_by=User.email)
