"""Raw incoming messages, stored before anything else happens to them."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from webapp.extensions import Model
from webapp.models.types import UTCDateTime, utcnow


class InboundStatus(enum.StrEnum):
    RECEIVED = "received"
    PROCESSED = "processed"
    QUARANTINED = "quarantined"


class InboundMessage(Model):
    __tablename__ = "inbound_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    # How it reached us: "mta" (flask mail ingest), "devmail" (the development sandbox), and
    # the receive protocols as they are added.
    source: Mapped[str] = mapped_column(String(20))
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    from_address: Mapped[str] = mapped_column(String(320), default="")
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int]
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(
        String(20), default=InboundStatus.RECEIVED.value, index=True
    )
    status_reason: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
