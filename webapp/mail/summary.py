"""A cheap look at a raw message's headers: enough to list it, without parsing the body.

Every stored message is summarised while its poll holds the mailbox, so this runs on the
receiving path: only the header block is parsed (with the fast `compat32` policy), and a
value goes through `policy.default`'s header registry only when it is not plain ASCII text,
which gives the same result at a fraction of the cost for ordinary mail.
"""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import getaddresses

from webapp.mail.parse import guess_text, read_message_id

_parser = BytesHeaderParser(policy=email.policy.compat32)
_strict = email.policy.default
_MAX_HEADER = 998
# The longest address stored (the column's size; RFC 5321 allows 256 octets in a path). A
# longer From is not an address anyone can be answered at: the message is listed without one.
_MAX_ADDRESS = 320
# The end of the header block: the first empty line.
_HEADER_END_RE = re.compile(rb"\r?\n\r?\n")
_PLAIN_RE = re.compile(r"[ -~\t\r\n]*\Z")
# compat32 keeps bytes that are not ASCII as lone surrogates, which no database stores; and
# PostgreSQL stores no NUL. Neither has a place in a one-line value.
_SURROGATE_RE = re.compile("[\udc80-\udcff]")
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class MessageSummary:
    subject: str
    from_address: str
    message_id: str | None


def _raw_header(message: Message, name: str) -> str | None:
    wanted = name.lower()
    return next((str(v) for k, v in message.raw_items() if k.lower() == wanted), None)


def _header(message: Message, name: str) -> str:
    raw = _raw_header(message, name)
    if raw is None:
        return ""
    if _SURROGATE_RE.search(raw):
        # Raw 8-bit bytes: UTF-8 (RFC 6532) or a legacy charset, read as the parser reads them.
        raw = guess_text(raw.encode("ascii", "surrogateescape"))
    if _PLAIN_RE.match(raw) and "=?" not in raw:
        value = raw  # what the strict policy would make of it, minus the cost
    else:
        try:
            value = str(_strict.header_fetch_parse(name, raw))
        except (ValueError, IndexError, TypeError):
            # A header the policy cannot make sense of (broken encoded words, bad addresses).
            value = raw
    return " ".join(_CONTROL_RE.sub("", value).split())[:_MAX_HEADER]


def summarize(raw: bytes) -> MessageSummary:
    """Subject, first From address and Message-ID of `raw`; never raises on malformed input."""
    end = _HEADER_END_RE.search(raw)
    message = _parser.parsebytes(raw[: end.end()] if end else raw)
    subject = _header(message, "Subject")
    sender = ""
    pairs = getaddresses([_header(message, "From")])
    if pairs and "@" in pairs[0][1] and len(pairs[0][1]) <= _MAX_ADDRESS:
        sender = pairs[0][1].lower()
    message_id = read_message_id(_raw_header(message, "Message-ID") or "")
    return MessageSummary(subject=subject, from_address=sender, message_id=message_id)
