"""Building outgoing messages."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from webapp.models.types import utcnow


class HeaderValueError(ValueError):
    """A value meant for a header holds a line break or NUL."""


def check_header_value(name: str, value: str) -> str:
    """Return `value`; raises HeaderValueError when it could inject a header."""
    if any(ch in value for ch in "\r\n\0"):
        raise HeaderValueError(f"{name} must be a single line")
    return value


def build_message(
    *,
    sender: str,
    to: str,
    subject: str,
    body: str,
    message_id_domain: str,
    in_reply_to: str | None = None,
    references: str | None = None,
) -> EmailMessage:
    """A plain-text message with our own Message-ID; raises HeaderValueError."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = check_header_value("From", sender)
    message["To"] = check_header_value("To", to)
    message["Subject"] = check_header_value("Subject", subject)
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = make_msgid(domain=message_id_domain)
    if in_reply_to:
        message["In-Reply-To"] = check_header_value("In-Reply-To", in_reply_to)
        chain = f"{references} {in_reply_to}" if references else in_reply_to
        message["References"] = check_header_value("References", " ".join(chain.split()))
    message.set_content(body)
    return message


def reply_subject(subject: str) -> str:
    stripped = subject.strip()
    return stripped if stripped.lower().startswith("re:") else f"Re: {stripped}"


def quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines())
