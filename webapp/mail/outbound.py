"""Building the outgoing messages the outbox stores and the senders transmit.

Every value that reaches a header is checked here, whatever its source (a template, a case
field, the subject of an incoming email): a value that could end a header line or start a new
one is refused with a HeaderValueError naming the field, except display names and file names,
which are cleaned instead, because refusing a notification over a stray line break in someone's
name helps nobody.

Bodies are always quoted-printable and attachments base64, so the message is 7-bit: no relay
re-encodes it on the way, which is what keeps an S/MIME signature over it valid (RFC 8551 3.1.1).
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import functools
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address, AddressHeader, UnstructuredHeader
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime, make_msgid
from typing import NamedTuple

from webapp.mail.compose import HeaderValueError
from webapp.mail.correlate import TOKEN_HEADER, is_reply_token
from webapp.mail.parse import sanitize_filename

__all__ = [
    "CASE_HEADER",
    "TOKEN_HEADER",
    "HeaderValueError",
    "OutboundAttachment",
    "OutboundError",
    "OutboundSpec",
    "build_outbound",
    "clean_display_name",
    "header_text",
    "message_bytes",
    "outbound_bytes",
]

CASE_HEADER = "X-Casemail-Case"
_MAX_WORD = 75  # the longest encoded word (RFC 2047, section 2)
_LONG_WORD_RE = re.compile(rf"\S{{{_MAX_WORD + 1},}}")  # what str.split() would give as a word
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_PART_RE = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_MSGID_RE = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,250}>")  # printable ASCII but < and >
_HEADER_NAME_RE = re.compile(r"X-Casemail-[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*", re.IGNORECASE)
_MAX_HEADER_NAME = 64
_CASE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MIME_NAME = r"[A-Za-z0-9!#$&^_.+-]{1,64}"
_CONTENT_TYPE_RE = re.compile(rf"({_MIME_NAME})/({_MIME_NAME})")
_MAX_FILENAME_BYTES = 200
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
# What outbound_bytes writes without the library's folder: printable ASCII words between single
# spaces, message ids of dot-atoms, dates as format_datetime writes them (years of 4 digits,
# offsets in whole minutes).
_PLAIN_TEXT_RE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_PLAIN_MSGID_RE = re.compile(rf"<{_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*>")
_PLAIN_DATE_RE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-3]\d "
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (?:19|[2-9]\d)\d\d "
    r"[0-2]\d:[0-5]\d:[0-6]\d [+-][0-2]\d[0-5]\d"
)
_MAX_LINE = 78  # POLICY's max_line_length
_CRLF = "\r\n"
_PLAIN_TEXT_HEADERS = (
    'Content-Type: text/plain; charset="utf-8"\r\n'
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "MIME-Version: 1.0\r\n"
)
_BREAKS = frozenset(("Cc", "Zl", "Zp"))  # controls, line and paragraph separators
_PRINTABLE_RE = re.compile(r"[\x20-\x7e]*")  # printable ASCII: none of it is in _BREAKS


class _OutboundPolicy(email.policy.EmailPolicy):
    """The SMTP policy, with our own RFC 2047 encoding of header text.

    Faults of the standard library, seen with Python 3.11 here: its header folder drops the
    spaces between adjacent encoded words once a header needs folding (a long subject with
    "für März, Zoë" reads back as "fürMärz,Zoë") and the quotes around long display names, and
    its parser, like others, reads a space into a display name wherever two encoded words meet.
    So text is encoded whole, spaces included, in words that end after a space wherever
    possible: strict and lenient readers then agree. Text that merely looks like an encoded
    word ("=?") is encoded too, so that it reads back as typed.
    """

    def fold(self, name: str, value: str) -> str:
        return self._encoded(name, value) or super().fold(name, value)

    def fold_binary(self, name: str, value: str) -> bytes:
        encoded = self._encoded(name, value)
        return encoded.encode("ascii") if encoded else super().fold_binary(name, value)

    def _encoded(self, name: str, value: str) -> str | None:
        if isinstance(value, AddressHeader):
            return _address_lines(name, value.addresses, self.linesep)
        text = str(value)
        if isinstance(value, UnstructuredHeader) and _needs_words(text):
            return _text_lines(name, text, self.linesep, self.max_line_length or 78)
        return None


def _address_lines(name: str, addresses: Sequence[Address], linesep: str) -> str:
    fold = f"{linesep} "
    mailboxes = [_mailbox_text(address, fold) for address in addresses]
    return f"{name}: {f',{fold}'.join(mailboxes)}{linesep}"


def _mailbox_text(address: Address, fold: str) -> str:
    # Each mailbox on its own line. The standard folder also drops the quotes around a long
    # display name when it folds it, which would let "Eve <eve@...>, x" become two addresses:
    # a name that does not fit on one line is always encoded.
    plain = str(address)
    if not address.display_name or (
        not _needs_encoding(address.display_name) and len(plain) <= _MAX_WORD
    ):
        return plain
    # The encoded name fills its lines; the address goes on the next one.
    return f"{fold.join(_encoded_words(address.display_name))}{fold}<{address.addr_spec}>"


def _needs_words(text: str) -> bool:
    return _needs_encoding(text) or _LONG_WORD_RE.search(text) is not None


def _text_lines(name: str, text: str, linesep: str, max_line_length: int) -> str:
    words = _encoded_words(text, first=max_line_length - len(name) - 2)
    return f"{name}: {f'{linesep} '.join(words)}{linesep}"


def _needs_encoding(text: str) -> bool:
    return not text.isascii() or "=?" in text


def _encoded_words(text: str, *, first: int = _MAX_WORD) -> list[str]:
    """`text` as base64 encoded words of at most 75 characters, the first of at most `first`."""
    words: list[str] = []
    current = ""
    limit = max(first, 24)
    # Each piece is a word with the spaces after it, so that breaks fall after spaces.
    for piece in re.findall(r"\s+|\S+\s*", text):
        for unit in [piece] if _word_length(piece) <= limit else list(piece):
            if current and _word_length(current + unit) > limit:
                words.append(_encoded_word(current))
                current, limit = "", _MAX_WORD
            current += unit
    words.append(_encoded_word(current))
    return words


def _word_length(text: str) -> int:
    return len("=?utf-8?b??=") + 4 * -(-len(text.encode("utf-8")) // 3)


def _encoded_word(text: str) -> str:
    return f"=?utf-8?b?{base64.b64encode(text.encode('utf-8')).decode('ascii')}?="


POLICY = _OutboundPolicy(linesep="\r\n")  # CRLF and 7-bit headers: what SMTP and signing need


class OutboundError(ValueError):
    """The message cannot be built as asked; the message says what to change."""


@dataclass(frozen=True)
class OutboundAttachment:
    filename: str
    content_type: str  # such as "application/pdf"
    content: bytes


@dataclass(frozen=True)
class OutboundSpec:
    """Everything an outgoing message says. Recipients are `addr` or `Name <addr>`, one each."""

    from_address: str
    subject: str
    text: str
    message_id_domain: str
    from_name: str = ""
    reply_to: str | None = None  # such as a plus-addressed reply-token address
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    html: str | None = None  # sent as the preferred alternative to `text`
    attachments: tuple[OutboundAttachment, ...] = ()
    in_reply_to: str | None = None  # the Message-ID answered
    references: tuple[str, ...] = ()  # the References of the message answered, oldest first
    automatic: bool = False
    token: str | None = None  # reply token, sent as X-Casemail-Token
    case_id: str | None = None  # sent as X-Casemail-Case
    extra_headers: tuple[tuple[str, str], ...] = ()  # more X-Casemail-* headers
    message_id: str | None = None  # a fresh one is made when None
    date: datetime | None = None  # now when None


def build_outbound(spec: OutboundSpec) -> EmailMessage:
    """The message described by `spec`; raises HeaderValueError or OutboundError."""
    message = EmailMessage(policy=POLICY)
    for header in _headers(spec):
        message[header.name] = _stored(header)
    _content(message, spec)
    return message


def message_bytes(message: EmailMessage) -> bytes:
    """`message` as the bytes SMTP transmits: CRLF line endings, 7-bit headers."""
    return message.as_bytes(policy=POLICY)


def outbound_bytes(spec: OutboundSpec) -> bytes:
    """What message_bytes(build_outbound(spec)) gives, sooner; raises as build_outbound does.

    The email package parses every header value it is given again (its header registry) and
    writes each through its general folder: for a plain-text message, which nearly every
    notification, approval request and answer is, that took about 1 ms of the sender's time per
    message, more than transmitting it (0.05 ms as written here; both measured). So plain-text
    messages are written here: the header values come from the same validators as
    build_outbound's (`_headers`), addresses and text that needs encoded words from the same
    writers as POLICY's (`_address_lines`, `_text_lines`), and any line the short writers below
    do not reproduce exactly goes through the library's folder on its own. The headers are byte
    for byte those of build_outbound; the body is the same quoted-printable text, in lines no
    longer than the library's.
    """
    if spec.html is not None or spec.attachments:
        return message_bytes(build_outbound(spec))
    head = "".join(_header_line(header) for header in _headers(spec))
    return f"{head}{_PLAIN_TEXT_HEADERS}\r\n".encode("ascii") + _quoted_printable(spec.text)


class _Header(NamedTuple):
    name: str
    value: str | list[Address]
    typed: bool = False  # text as people typed it: stored pre-encoded so that it reads back


def _headers(spec: OutboundSpec) -> list[_Header]:
    """The checked headers of `spec`, in order; raises HeaderValueError or OutboundError."""
    sender = _mailbox("From address", spec.from_address, allow_name=False)
    from_ = Address(
        display_name=clean_display_name(spec.from_name),
        username=sender.username,
        domain=sender.domain,
    )
    headers = [_Header("From", [from_])]
    to = [_mailbox("To", value) for value in spec.to]
    cc = [_mailbox("Cc", value) for value in spec.cc]
    if not to and not cc:
        raise OutboundError("The message needs at least one recipient in To or Cc.")
    if to:
        headers.append(_Header("To", to))
    if cc:
        headers.append(_Header("Cc", cc))
    if spec.reply_to is not None:
        headers.append(_Header("Reply-To", [_mailbox("Reply-To", spec.reply_to)]))
    headers.append(_Header("Subject", header_text("Subject", spec.subject), typed=True))
    date = spec.date or datetime.now(UTC)
    if date.tzinfo is None:
        raise OutboundError("The message date must carry a time zone.")
    headers.append(_Header("Date", format_datetime(date)))
    domain = _domain("Message-ID domain", spec.message_id_domain)
    if spec.message_id is None:
        headers.append(_Header("Message-ID", make_msgid(domain=domain)))
    else:
        headers.append(_Header("Message-ID", _own_message_id(spec.message_id)))
    headers.extend(_threading(spec))
    if spec.automatic:
        # RFC 3834: responders must not answer "auto-generated" mail. Exchange and Outlook
        # ignore that header but honour X-Auto-Response-Suppress. "Precedence" is left out: it
        # was never standardised (RFC 3834 only lets responders look at it), and "bulk" makes
        # some providers file the message as mass mail, where an approver would miss it.
        headers.append(_Header("Auto-Submitted", "auto-generated"))
        headers.append(_Header("X-Auto-Response-Suppress", "All"))
    headers.extend(_casemail_headers(spec))
    return headers


def _header_line(header: _Header) -> str:
    """`header` as POLICY folds it, CRLF included."""
    name, value = header.name, header.value
    if isinstance(value, list):
        return _address_line(name, tuple((a.display_name, a.username, a.domain) for a in value))
    kind = name.lower()
    if kind in ("date", "message-id"):
        # The library parses these and writes them again: a date as it was (_PLAIN_DATE_RE),
        # an id as it was, on the next line if it fits there but not after the name.
        plain = _PLAIN_DATE_RE if kind == "date" else _PLAIN_MSGID_RE
        if plain.fullmatch(value):
            if len(name) + 2 + len(value) > _MAX_LINE and 1 + len(value) <= _MAX_LINE:
                return f"{name}:{_CRLF} {value}{_CRLF}"
            return f"{name}: {value}{_CRLF}"
    # The library decodes look-alike encoded words in text stored as is (message ids here).
    elif header.typed or "=?" not in value:
        if _needs_words(value):
            return _text_lines(name, value, _CRLF, _MAX_LINE)
        if not value or _PLAIN_TEXT_RE.fullmatch(value):
            return _folded(name, value)
    return POLICY.fold_binary(*POLICY.header_store_parse(name, _stored(header))).decode("ascii")


@functools.lru_cache(maxsize=1024)
def _address_line(name: str, mailboxes: tuple[tuple[str, str, str], ...]) -> str:
    # Cached: the sender, its Reply-To and most recipients recur in every batch, and writing
    # an address line is a large part of writing a notification's headers.
    addresses = [Address(display, user, domain) for display, user, domain in mailboxes]
    return _address_lines(name, addresses, _CRLF)


def _folded(name: str, text: str) -> str:
    """Plain `text` as the library folds it."""
    if not text:
        return f"{name}:{_CRLF}"
    if len(name) + 2 + len(text) <= _MAX_LINE:
        return f"{name}: {text}{_CRLF}"
    if 1 + len(text) <= _MAX_LINE:  # all of it on the next line
        return f"{name}:{_CRLF} {text}{_CRLF}"
    # Otherwise each word after the last where it still fits.
    lines, line = [], f"{name}:"
    for word in text.split(" "):
        if len(line) + 1 + len(word) > _MAX_LINE:
            lines.append(line)
            line = ""
        line = f"{line} {word}"
    lines.append(line)
    return f"{_CRLF.join(lines)}{_CRLF}"


def _quoted_printable(text: str) -> bytes:
    """`text` as set_content(..., cte="quoted-printable") encodes it, with CRLF line ends."""
    body = _body_text(text)
    if not body.endswith("\n"):
        body += "\n"
    return binascii.b2a_qp(body.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


def clean_display_name(name: str) -> str:
    """`name` on one line: controls and line breaks become spaces, runs of spaces fold."""
    if _PRINTABLE_RE.fullmatch(name):
        return " ".join(name.split())
    name = _valid_text(name)
    return " ".join(
        "".join(" " if unicodedata.category(ch) in _BREAKS else ch for ch in name).split()
    )


def _valid_text(text: str) -> str:
    # Lone surrogates (undecodable bytes carried through) cannot be encoded at all.
    return _SURROGATE_RE.sub("\ufffd", text)


def _single_line(field: str, value: str) -> str:
    if _PRINTABLE_RE.fullmatch(value):  # most values: spares the look at each character
        return value
    if any(unicodedata.category(ch) in _BREAKS and ch != "\t" for ch in value):
        raise HeaderValueError(f"{field} must be a single line without control characters.")
    if _SURROGATE_RE.search(value):
        raise HeaderValueError(f"{field} holds characters that are not valid text.")
    return value


def header_text(field: str, value: str) -> str:
    """`value`, checked to be one line of text; raises HeaderValueError naming `field`.

    Forms check here the header text they store (an acknowledgement's subject), so that what
    is saved is what a message can be built with.
    """
    return _single_line(field, value)


def _stored(header: _Header) -> str | list[Address]:
    """The value of `header` as it must be stored so that it reads back exactly."""
    # The header registry decodes encoded words in what it is given: text that only looks like
    # one ("=?utf-8?q?...?=" typed in a subject) is handed over already encoded.
    value = header.value
    if header.typed and isinstance(value, str) and _needs_encoding(value):
        return " ".join(_encoded_words(value))
    return value


@functools.lru_cache(maxsize=1024)
def _mailbox(field: str, value: str, *, allow_name: bool = True) -> Address:
    """The single address in `value`; raises HeaderValueError naming `field`. (Cached: the
    same few addresses recur in every batch. An Address cannot be changed.)"""
    _single_line(field, value)
    parts = _mailbox_parts(value)
    if parts is None or (parts[0] and not allow_name):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise HeaderValueError(f"{field} {shown!r} is not a single valid email address.")
    _, display_name, local, domain = parts
    return Address(display_name=display_name, username=local, domain=domain)


@functools.lru_cache(maxsize=2048)
def _mailbox_parts(value: str) -> tuple[bool, str, str, str] | None:
    """(named, display name, local part, domain) of the one address in `value`, else None."""
    # Cached because the same few addresses recur in every batch, and the header parser is
    # the slowest step of checking one (bounded: an entry is a few short strings).
    try:
        header = POLICY.header_factory("to", value)
        groups = header.groups
    # AttributeError: the 3.11 parser trips over some malformed quoted names ('". :>@\\ [" <a@b>').
    except (ValueError, TypeError, IndexError, AttributeError, HeaderParseError):
        return None
    if header.defects or len(groups) != 1 or groups[0].display_name is not None:
        return None
    addresses = groups[0].addresses
    if len(addresses) != 1:
        return None
    parsed = addresses[0]
    local = parsed.username
    # Quoted local parts are legal but rare, and the usual way to smuggle spaces, commas and
    # angle brackets into an address; no real mailbox of ours or our users' needs one. Non-ASCII
    # local parts would need SMTPUTF8 from every relay on the way.
    if len(local) > 64 or not _LOCAL_PART_RE.fullmatch(local):
        return None
    try:
        domain = _domain("Address", parsed.domain)
    except HeaderValueError:
        return None
    return bool(parsed.display_name), clean_display_name(parsed.display_name), local, domain


@functools.lru_cache(maxsize=256)
def _domain(field: str, value: str) -> str:
    """`value` as an ASCII host name (IDNA for non-ASCII); raises HeaderValueError."""
    _single_line(field, value)
    name = value.strip().rstrip(".")
    invalid = HeaderValueError(f"{field} {value[:80]!r} is not a valid domain name.")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise invalid from None
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise invalid
    return name.lower()


def _message_id(field: str, value: str) -> str:
    _single_line(field, value)
    if not _MSGID_RE.fullmatch(value.strip()):
        raise HeaderValueError(f"{field} {value[:80]!r} is not a message id such as <id@host>.")
    return value.strip()


def _own_message_id(value: str) -> str:
    message_id = _message_id("Message-ID", value)
    # Ours are dot-atoms, made by make_msgid. The library reads a parenthesis in an id as a
    # comment and writes the id cut short, at times with the rest on a line of its own that
    # readers take for another header.
    if not _PLAIN_MSGID_RE.fullmatch(message_id):
        raise HeaderValueError(f"Message-ID {value[:80]!r} is not a message id such as <id@host>.")
    return message_id


def _threading(spec: OutboundSpec) -> list[_Header]:
    headers = []
    chain = [_message_id("References", value) for value in spec.references]
    if spec.in_reply_to is not None:
        answered = _message_id("In-Reply-To", spec.in_reply_to)
        headers.append(_Header("In-Reply-To", answered))
        chain.append(answered)
    if chain:
        # Each id once, at its latest place: the message answered stays last.
        latest = list(dict.fromkeys(reversed(chain)))
        headers.append(_Header("References", " ".join(reversed(latest))))
    return headers


def _casemail_headers(spec: OutboundSpec) -> list[_Header]:
    headers = []
    if spec.token is not None:
        # is_reply_token's "$" also matches before a final line break.
        if spec.token.endswith("\n") or not is_reply_token(spec.token):
            raise HeaderValueError(f"{TOKEN_HEADER} {spec.token[:80]!r} is not a reply token.")
        headers.append(_Header(TOKEN_HEADER, spec.token))
    if spec.case_id is not None:
        if not _CASE_ID_RE.fullmatch(spec.case_id):
            raise HeaderValueError(f"{CASE_HEADER} {spec.case_id[:80]!r} is not a case id.")
        headers.append(_Header(CASE_HEADER, spec.case_id))
    reserved = {TOKEN_HEADER.lower(), CASE_HEADER.lower()}
    for name, value in spec.extra_headers:
        # Longer names leave no room on the line; the library's folder fails on them.
        if (
            len(name) > _MAX_HEADER_NAME
            or not _HEADER_NAME_RE.fullmatch(name)
            or name.lower() in reserved
        ):
            raise HeaderValueError(
                f"Header name {name[:80]!r} is not an X-Casemail-* name this message may carry."
            )
        headers.append(_Header(name, header_text(name, value), typed=True))
    return headers


def _content(message: EmailMessage, spec: OutboundSpec) -> None:
    if spec.html is None and not spec.attachments:
        message.set_content(_body_text(spec.text), cte="quoted-printable")
        return
    message["MIME-Version"] = "1.0"
    body: MIMEPart = _text_part(spec.text, "plain")
    if spec.html is not None:
        alternative = MIMEPart(policy=POLICY) if spec.attachments else message
        alternative["Content-Type"] = "multipart/alternative"
        _attach(alternative, body)
        _attach(alternative, _text_part(spec.html, "html"))
        body = alternative
    if spec.attachments:
        message["Content-Type"] = "multipart/mixed"
        _attach(message, body)
        for attachment in spec.attachments:
            _attach(message, _attachment_part(attachment))


def _short_filename(name: str) -> str:
    # Inside a signed message headers are written unfolded; a long non-ASCII name, percent-
    # encoded (RFC 2231), must still leave its line well under the 998-octet limit.
    if len(name.encode("utf-8")) <= _MAX_FILENAME_BYTES:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or len(extension) > 10:
        stem, dot, extension = name, "", ""
    budget = _MAX_FILENAME_BYTES - len(dot + extension)
    short = stem.encode("utf-8")[:budget].decode("utf-8", "ignore").rstrip(". ")
    return short + dot + extension


def _attach(container: MIMEPart, part: MIMEPart) -> None:
    container.attach(part)


def _body_text(text: str) -> str:
    # Bare CRs would become line breaks in some clients and not in others; NUL never belongs.
    return _valid_text(text).replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def _text_part(text: str, subtype: str) -> MIMEPart:
    part = MIMEPart(policy=POLICY)
    part.set_content(_body_text(text), subtype=subtype, cte="quoted-printable")
    return part


def _attachment_part(attachment: OutboundAttachment) -> MIMEPart:
    content_type = attachment.content_type.strip().lower()
    match = _CONTENT_TYPE_RE.fullmatch(content_type)
    if match is None:
        raise HeaderValueError(
            f"Attachment content type {attachment.content_type[:80]!r} is not a type/subtype "
            "such as application/pdf."
        )
    maintype, subtype = match.groups()
    if maintype in ("multipart", "message"):
        # RFC 2046 allows only 7bit/8bit/binary for these, and 8-bit would break signatures:
        # send the bytes as an opaque file, which every client still opens by its name.
        maintype, subtype = "application", "octet-stream"
    filename = _short_filename(
        sanitize_filename(clean_display_name(attachment.filename), content_type)
    )
    part = MIMEPart(policy=POLICY)
    part.set_content(
        attachment.content,
        maintype,
        subtype,
        disposition="attachment",
        filename=filename,
        cte="base64",
    )
    return part
