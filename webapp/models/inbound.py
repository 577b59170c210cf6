"""Raw incoming messages, stored before anything else happens to them."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, BigInteger, ForeignKey, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.ext.associationproxy import AssociationProxy, association_proxy
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webapp.extensions import Model
from webapp.models.types import UTCDateTime, utcnow

if TYPE_CHECKING:
    from webapp.models.cases import Case


class InboundStatus(enum.StrEnum):
    RECEIVED = "received"  # stored, waiting to be ingested
    PROCESSED = "processed"  # made or joined a case
    IGNORED = "ignored"  # automatic mail (auto-replies, bounces) that makes no case
    QUARANTINED = "quarantined"  # could not be processed; kept with the reason, replayable


class InboundMessage(Model):
    __tablename__ = "inbound_messages"
    # A message's identity on its server: stored once, whatever happens on the server after.
    __table_args__ = (
        UniqueConstraint("account_id", "folder", "uidvalidity", "uid", name="uq_inbound_imap"),
        UniqueConstraint("account_id", "uidl", name="uq_inbound_pop3"),
        UniqueConstraint("account_id", "graph_id", name="uq_inbound_graph"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # How it reached us: "imap", "pop3", "graph" (listeners), "mta" (flask mail ingest),
    # "http" (the intake endpoint) or "devmail" (the development sandbox).
    source: Mapped[str] = mapped_column(String(20))
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    from_address: Mapped[str] = mapped_column(String(320), default="")
    # Not indexed, nor is received_at: no query looks a message up by either, and every index
    # is written again each time a message is stored, claimed and given its outcome.
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int]
    # The message's bytes, in a table of their own (InboundRaw): read when needed, never
    # written again when the message is claimed or given its outcome.
    stored: Mapped[InboundRaw] = relationship(
        back_populates="message", cascade="all, delete-orphan", passive_deletes=True
    )
    raw: AssociationProxy[bytes] = association_proxy(
        "stored", "raw", creator=lambda raw: InboundRaw(raw=raw)
    )
    status: Mapped[str] = mapped_column(
        String(20), default=InboundStatus.RECEIVED.value, index=True
    )
    status_reason: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    listener_id: Mapped[int | None] = mapped_column(
        ForeignKey("email_listeners.id", ondelete="SET NULL"), index=True
    )
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("email_accounts.id", ondelete="SET NULL")
    )
    folder: Mapped[str | None] = mapped_column(String(255))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    uid: Mapped[int | None] = mapped_column(BigInteger)
    uidl: Mapped[str | None] = mapped_column(String(70))
    graph_id: Mapped[str | None] = mapped_column(String(255))
    # What ingesting it did: the case it made or joined, how it was matched, which filters fired.
    case_id: Mapped[int | None] = mapped_column(
        ForeignKey("cases.id", ondelete="SET NULL"), index=True
    )
    # Set through the object, a message and the case it opens are written in one flush: the
    # case's row first, then the message's with the case's new id.
    case: Mapped[Case | None] = relationship()
    correlation: Mapped[str] = mapped_column(Text, default="")
    decisions: Mapped[list[Any]] = mapped_column(JSON, default=list)
    attempts: Mapped[int] = mapped_column(default=0)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class InboundRaw(Model):
    """The bytes of an incoming message, exactly as they arrived.

    Apart from the message's row, which changes as the message is claimed and ingested: SQLite
    writes a whole row again whenever one of its columns changes, a message's bytes with it.
    """

    __tablename__ = "inbound_raw"

    id: Mapped[int] = mapped_column(
        ForeignKey("inbound_messages.id", ondelete="CASCADE"), primary_key=True
    )
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    message: Mapped[InboundMessage] = relationship(back_populates="stored")
