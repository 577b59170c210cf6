"""A cheap look at a raw message's headers: enough to list it, without parsing the body."""

from __future__ import annotations

import email.policy
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.utils import getaddresses

_parser = BytesHeaderParser(policy=email.policy.default)
_MAX_HEADER = 998


@dataclass(frozen=True)
class MessageSummary:
    subject: str
    from_address: str
    message_id: str | None


def _header(message: object, name: str) -> str:
    try:
        value = message.get(name)  # type: ignore[attr-defined]
    except (ValueError, IndexError, TypeError):
        # A header the policy cannot make sense of (broken encoded words, bad address lists).
        raw = message.get_all(name, failobj=[])  # type: ignore[attr-defined]
        value = str(raw[0]) if raw else ""
    return " ".join(str(value or "").split())[:_MAX_HEADER]


def summarize(raw: bytes) -> MessageSummary:
    """Subject, first From address and Message-ID of `raw`; never raises on malformed input."""
    message = _parser.parsebytes(raw)
    subject = _header(message, "Subject")
    sender = ""
    from_value = _header(message, "From")
    pairs = getaddresses([from_value])
    if pairs and pairs[0][1] and "@" in pairs[0][1]:
        sender = pairs[0][1].lower()
    message_id = _header(message, "Message-ID") or None
    return MessageSummary(subject=subject, from_address=sender, message_id=message_id)
