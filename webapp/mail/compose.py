"""Small helpers for the text of outgoing messages (building them: webapp.mail.outbound)."""

from __future__ import annotations


class HeaderValueError(ValueError):
    """A value meant for a header holds a line break or NUL."""


def check_header_value(name: str, value: str) -> str:
    """Return `value`; raises HeaderValueError when it could inject a header."""
    if any(ch in value for ch in "\r\n\0"):
        raise HeaderValueError(f"{name} must be a single line")
    return value


def reply_subject(subject: str) -> str:
    stripped = subject.strip()
    return stripped if stripped.lower().startswith("re:") else f"Re: {stripped}"


def quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines())
