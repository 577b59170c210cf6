"""The first step of every incoming message: store the raw bytes."""

from __future__ import annotations

import hashlib

from webapp.extensions import db
from webapp.mail.summary import summarize
from webapp.models import EmailListener, InboundMessage

SOURCES = ("mta", "devmail", "imap", "pop3", "graph", "http")


class IntakeError(ValueError):
    """The message was refused before it was stored; the message says why."""


def check_size(size: int, max_size: int | None) -> None:
    """Raise IntakeError when a message of `size` bytes is over `max_size` (None: no limit)."""
    if max_size is not None and size > max_size:
        raise IntakeError(f"the message has {size} bytes, more than the limit of {max_size}")


def store_inbound(
    raw: bytes, source: str, max_size: int | None = None, listener: EmailListener | None = None
) -> InboundMessage:
    """Store `raw` as an InboundMessage (flushed, not committed), for `listener` when given;
    raises IntakeError."""
    if source not in SOURCES:
        raise IntakeError(f"unknown source {source!r}")
    if not raw.strip():
        raise IntakeError("the message is empty")
    check_size(len(raw), max_size)
    summary = summarize(raw)
    message = InboundMessage(
        source=source,
        message_id=summary.message_id,
        subject=summary.subject,
        from_address=summary.from_address,
        sha256=hashlib.sha256(raw).hexdigest(),
        size=len(raw),
        raw=raw,
    )
    if listener is not None:
        # Named in the same statement as the row is written, so that the listener's row is
        # locked against deletion from then on (see services.listeners.delete_listener).
        message.listener_id = listener.id
        message.account_id = listener.account_id
    db.session.add(message)
    db.session.flush()
    return message


def store_for_listener(raw: bytes, source: str, listener: EmailListener) -> InboundMessage:
    """Store `raw` for `listener` within its size limit (flushed, not committed); raises
    IntakeError."""
    return store_inbound(raw, source, max_size=listener.max_message_bytes, listener=listener)
