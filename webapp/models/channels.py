"""Email channels: ordered routes that send each message to a case type, a rule, or aside."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webapp.extensions import Model
from webapp.models.cases import CaseType
from webapp.models.listeners import ServiceEmailRule
from webapp.models.types import UTCDateTime, utcnow


class EmailChannel(Model):
    """Triage for a listener: routes tried in order, first match or all matches, and a default."""

    __tablename__ = "email_channels"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    mode: Mapped[str] = mapped_column(String(10), default="first")  # first, all
    # The default route: case_type, rule, ignore or quarantine.
    default_kind: Mapped[str] = mapped_column(String(20), default="quarantine")
    default_rule_id: Mapped[int | None] = mapped_column(
        ForeignKey("service_email_rules.id", ondelete="RESTRICT"), index=True
    )
    default_case_type_id: Mapped[int | None] = mapped_column(
        ForeignKey("case_types.id", ondelete="RESTRICT"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    default_rule: Mapped[ServiceEmailRule | None] = relationship()
    default_case_type: Mapped[CaseType | None] = relationship()
    routes: Mapped[list[ChannelRoute]] = relationship(
        back_populates="channel",
        order_by="ChannelRoute.position",
        cascade="all, delete-orphan",
    )


class ChannelRoute(Model):
    """One route of a channel: every condition must hold; then the message goes to the target."""

    __tablename__ = "channel_routes"

    id: Mapped[int] = mapped_column(primary_key=True)
    channel_id: Mapped[int] = mapped_column(
        ForeignKey("email_channels.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(default=1)
    # [{"field": "sender"|"sender_domain"|"recipients"|"subject"|"body"|"header",
    #   "header": name (field "header" only), "op": "contains"|"equals"|"regex", "value": text}]
    conditions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    target_kind: Mapped[str] = mapped_column(String(20))  # case_type, rule, ignore, quarantine
    rule_id: Mapped[int | None] = mapped_column(
        ForeignKey("service_email_rules.id", ondelete="RESTRICT"), index=True
    )
    case_type_id: Mapped[int | None] = mapped_column(
        ForeignKey("case_types.id", ondelete="RESTRICT"), index=True
    )

    channel: Mapped[EmailChannel] = relationship(back_populates="routes")
    rule: Mapped[ServiceEmailRule | None] = relationship()
    case_type: Mapped[CaseType | None] = relationship()
