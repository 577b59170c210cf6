"""The development mail sandbox's store: every message it accepted, in a Maildir.

Used by the sandbox SMTP server (workers/devmail.py), which writes, and the /dev/mailbox pages,
which read. Nothing here is used in production.
"""

from __future__ import annotations

import email.policy
import mailbox
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from pathlib import Path

import nh3

ENVELOPE_FROM = "X-Sandbox-Envelope-From"
ENVELOPE_TO = "X-Sandbox-Envelope-To"
INTAKE = "X-Sandbox-Intake"
_KEY_RE = re.compile(r"^[A-Za-z0-9._,:=-]{1,200}$")
_parser = BytesParser(policy=email.policy.default)
_header_parser = BytesHeaderParser(policy=email.policy.default)
_KEY_TIME_RE = re.compile(r"^(\d+)\.M(\d+)")


@dataclass(frozen=True)
class SandboxEntry:
    key: str
    received: datetime
    sender: str
    recipients: list[str]
    subject: str
    intake_note: str


@dataclass(frozen=True)
class SandboxMessage:
    entry: SandboxEntry
    message: EmailMessage
    headers: list[tuple[str, str]]
    text: str
    html: str  # sanitised
    attachments: list[tuple[str, str, int]]  # file name, content type, size
    raw: bytes


def address_base(address: str) -> str:
    """`user+tag@Domain` -> `user@domain`, for matching plus-addressed intake mail."""
    local, _, domain = address.strip().lower().rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


class Sandbox:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._maildir = mailbox.Maildir(str(self.path), factory=None, create=True)

    def add(self, raw: bytes, sender: str, recipients: list[str], intake_note: str = "") -> str:
        """Store `raw` with its envelope; returns the message key."""
        envelope = (
            f"{ENVELOPE_FROM}: {_one_line(sender)}\r\n"
            f"{ENVELOPE_TO}: {_one_line(', '.join(recipients))}\r\n"
        )
        if intake_note:
            envelope += f"{INTAKE}: {_one_line(intake_note)}\r\n"
        return self._maildir.add(envelope.encode("utf-8") + raw)

    def entries(self, limit: int = 200) -> list[SandboxEntry]:
        """The newest `limit` messages, newest first."""
        found: list[tuple[float, str]] = []
        for key in self._maildir.iterkeys():
            found.append((self._mtime(key), key))
        found.sort(reverse=True)
        return [self._entry(key, mtime) for mtime, key in found[:limit]]

    def count(self) -> int:
        return len(self._maildir)

    def get(self, key: str) -> SandboxMessage | None:
        if not _KEY_RE.match(key):
            return None
        try:
            raw = self._maildir.get_bytes(key)
        except KeyError:
            return None
        message = _parser.parsebytes(raw)
        entry = self._entry(key, self._mtime(key), message)
        text_part = message.get_body(preferencelist=("plain",))
        html_part = message.get_body(preferencelist=("html",))
        attachments = []
        for part in message.iter_attachments():
            payload = part.get_payload(decode=True) or b""
            attachments.append(
                (part.get_filename() or "(no name)", part.get_content_type(), len(payload))
            )
        headers = [
            (name, str(value))
            for name, value in _safe_items(message)
            if name not in (ENVELOPE_FROM, ENVELOPE_TO, INTAKE)
        ]
        return SandboxMessage(
            entry=entry,
            message=message,
            headers=headers,
            text=_content(text_part),
            html=nh3.clean(_content(html_part)) if html_part is not None else "",
            attachments=attachments,
            raw=_strip_envelope(raw),
        )

    def clear(self) -> None:
        self._maildir.clear()

    def _mtime(self, key: str) -> float:
        # Maildir keys begin with the delivery time: "<seconds>.M<microseconds>P<pid>...".
        match = _KEY_TIME_RE.match(key)
        if match:
            return int(match.group(1)) + int(match.group(2)) / 1_000_000
        return self._maildir.get_message(key).get_date()

    def _entry(self, key: str, mtime: float, message: EmailMessage | None = None) -> SandboxEntry:
        if message is None:
            with self._maildir.get_file(key) as fh:
                message = _header_parser.parse(fh)  # type: ignore[arg-type]
        return SandboxEntry(
            key=key,
            received=datetime.fromtimestamp(mtime, UTC),
            sender=_get(message, ENVELOPE_FROM),
            recipients=[r.strip() for r in _get(message, ENVELOPE_TO).split(",") if r.strip()],
            subject=_get(message, "Subject") or "(no subject)",
            intake_note=_get(message, INTAKE),
        )


def _one_line(value: str) -> str:
    return " ".join(value.replace("\0", " ").split())


def _get(message: EmailMessage, name: str) -> str:
    try:
        return str(message.get(name, "") or "")
    except (ValueError, IndexError, TypeError):
        return ""


def _safe_items(message: EmailMessage) -> list[tuple[str, str]]:
    items = []
    for name in message.keys():  # noqa: SIM118 - keys() keeps repeated headers
        items.append((name, _get(message, name)))
    return items


def _content(part: object) -> str:
    if part is None:
        return ""
    try:
        return str(part.get_content())  # type: ignore[attr-defined]
    except (LookupError, ValueError, AssertionError):
        payload = part.get_payload(decode=True) or b""  # type: ignore[attr-defined]
        return payload.decode("utf-8", errors="replace")


def _strip_envelope(raw: bytes) -> bytes:
    lines = raw.split(b"\r\n") if b"\r\n" in raw[:500] else raw.split(b"\n")
    sep = b"\r\n" if b"\r\n" in raw[:500] else b"\n"
    prefixes = tuple(f"{h}:".encode() for h in (ENVELOPE_FROM, ENVELOPE_TO, INTAKE))
    while lines and lines[0].startswith(prefixes):
        lines.pop(0)
    return sep.join(lines)
