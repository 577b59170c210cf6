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
import email.policy
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address, AddressHeader, UnstructuredHeader
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime, make_msgid

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
    "message_bytes",
]

CASE_HEADER = "X-Casemail-Case"
_MAX_WORD = 75  # the longest encoded word (RFC 2047, section 2)
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_PART_RE = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_MSGID_RE = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,250}>")  # printable ASCII but < and >
_HEADER_NAME_RE = re.compile(r"X-Casemail-[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*", re.IGNORECASE)
_CASE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MIME_NAME = r"[A-Za-z0-9!#$&^_.+-]{1,64}"
_CONTENT_TYPE_RE = re.compile(rf"({_MIME_NAME})/({_MIME_NAME})")
_MAX_FILENAME_BYTES = 200
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_BREAKS = frozenset(("Cc", "Zl", "Zp"))  # controls, line and paragraph separators


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
        fold = f"{self.linesep} "
        if isinstance(value, AddressHeader):
            mailboxes = [self._mailbox(address, fold) for address in value.addresses]
            return f"{name}: {f',{fold}'.join(mailboxes)}{self.linesep}"
        text = str(value)
        if isinstance(value, UnstructuredHeader) and (
            _needs_encoding(text) or any(len(word) > _MAX_WORD for word in text.split())
        ):
            words = _encoded_words(text, first=(self.max_line_length or 78) - len(name) - 2)
            return f"{name}: {fold.join(words)}{self.linesep}"
        return None

    def _mailbox(self, address: Address, fold: str) -> str:
        # Each mailbox on its own line. The standard folder also drops the quotes around a
        # long display name when it folds it, which would let "Eve <eve@...>, x" become two
        # addresses: a name that does not fit on one line is always encoded.
        plain = str(address)
        if not address.display_name or (
            not _needs_encoding(address.display_name) and len(plain) <= _MAX_WORD
        ):
            return plain
        # The encoded name fills its lines; the address goes on the next one.
        return f"{fold.join(_encoded_words(address.display_name))}{fold}<{address.addr_spec}>"


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
    sender = _mailbox("From address", spec.from_address, allow_name=False)
    message["From"] = Address(
        display_name=clean_display_name(spec.from_name),
        username=sender.username,
        domain=sender.domain,
    )
    to = [_mailbox("To", value) for value in spec.to]
    cc = [_mailbox("Cc", value) for value in spec.cc]
    if not to and not cc:
        raise OutboundError("The message needs at least one recipient in To or Cc.")
    if to:
        message["To"] = to
    if cc:
        message["Cc"] = cc
    if spec.reply_to is not None:
        message["Reply-To"] = _mailbox("Reply-To", spec.reply_to)
    message["Subject"] = _header_text("Subject", spec.subject)
    date = spec.date or datetime.now(UTC)
    if date.tzinfo is None:
        raise OutboundError("The message date must carry a time zone.")
    message["Date"] = format_datetime(date)
    domain = _domain("Message-ID domain", spec.message_id_domain)
    if spec.message_id is None:
        message["Message-ID"] = make_msgid(domain=domain)
    else:
        message["Message-ID"] = _message_id("Message-ID", spec.message_id)
    _threading(message, spec)
    if spec.automatic:
        # RFC 3834: responders must not answer "auto-generated" mail. Exchange and Outlook
        # ignore that header but honour X-Auto-Response-Suppress. "Precedence" is left out: it
        # was never standardised (RFC 3834 only lets responders look at it), and "bulk" makes
        # some providers file the message as mass mail, where an approver would miss it.
        message["Auto-Submitted"] = "auto-generated"
        message["X-Auto-Response-Suppress"] = "All"
    _casemail_headers(message, spec)
    _content(message, spec)
    return message


def message_bytes(message: EmailMessage) -> bytes:
    """`message` as the bytes SMTP transmits: CRLF line endings, 7-bit headers."""
    return message.as_bytes(policy=POLICY)


def clean_display_name(name: str) -> str:
    """`name` on one line: controls and line breaks become spaces, runs of spaces fold."""
    name = _valid_text(name)
    return " ".join(
        "".join(" " if unicodedata.category(ch) in _BREAKS else ch for ch in name).split()
    )


def _valid_text(text: str) -> str:
    # Lone surrogates (undecodable bytes carried through) cannot be encoded at all.
    return _SURROGATE_RE.sub("\ufffd", text)


def _single_line(field: str, value: str) -> str:
    if any(unicodedata.category(ch) in _BREAKS and ch != "\t" for ch in value):
        raise HeaderValueError(f"{field} must be a single line without control characters.")
    if _SURROGATE_RE.search(value):
        raise HeaderValueError(f"{field} holds characters that are not valid text.")
    return value


def _header_text(field: str, value: str) -> str:
    """`value` as it must be stored so that it reads back exactly; raises HeaderValueError."""
    # The header registry decodes encoded words in what it is given: text that only looks like
    # one ("=?utf-8?q?...?=" typed in a subject) is handed over already encoded.
    _single_line(field, value)
    return " ".join(_encoded_words(value)) if _needs_encoding(value) else value


def _mailbox(field: str, value: str, *, allow_name: bool = True) -> Address:
    """The single address in `value`; raises HeaderValueError naming `field`."""
    _single_line(field, value)
    shown = value if len(value) <= 80 else value[:77] + "..."
    invalid = HeaderValueError(f"{field} {shown!r} is not a single valid email address.")
    try:
        header = POLICY.header_factory("to", value)
        groups = header.groups
    except (ValueError, TypeError, IndexError, HeaderParseError):
        raise invalid from None
    if header.defects or len(groups) != 1 or groups[0].display_name is not None:
        raise invalid
    addresses = groups[0].addresses
    if len(addresses) != 1 or (addresses[0].display_name and not allow_name):
        raise invalid
    parsed = addresses[0]
    local = parsed.username
    # Quoted local parts are legal but rare, and the usual way to smuggle spaces, commas and
    # angle brackets into an address; no real mailbox of ours or our users' needs one. Non-ASCII
    # local parts would need SMTPUTF8 from every relay on the way.
    if len(local) > 64 or not _LOCAL_PART_RE.fullmatch(local):
        raise invalid
    try:
        domain = _domain(field, parsed.domain)
    except HeaderValueError:
        raise invalid from None
    return Address(
        display_name=clean_display_name(parsed.display_name), username=local, domain=domain
    )


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


def _threading(message: EmailMessage, spec: OutboundSpec) -> None:
    chain = [_message_id("References", value) for value in spec.references]
    if spec.in_reply_to is not None:
        answered = _message_id("In-Reply-To", spec.in_reply_to)
        message["In-Reply-To"] = answered
        chain.append(answered)
    if chain:
        # Each id once, at its latest place: the message answered stays last.
        latest = list(dict.fromkeys(reversed(chain)))
        message["References"] = " ".join(reversed(latest))


def _casemail_headers(message: EmailMessage, spec: OutboundSpec) -> None:
    if spec.token is not None:
        if not is_reply_token(spec.token):
            raise HeaderValueError(f"{TOKEN_HEADER} {spec.token[:80]!r} is not a reply token.")
        message[TOKEN_HEADER] = spec.token
    if spec.case_id is not None:
        if not _CASE_ID_RE.fullmatch(spec.case_id):
            raise HeaderValueError(f"{CASE_HEADER} {spec.case_id[:80]!r} is not a case id.")
        message[CASE_HEADER] = spec.case_id
    reserved = {TOKEN_HEADER.lower(), CASE_HEADER.lower()}
    for name, value in spec.extra_headers:
        if not _HEADER_NAME_RE.fullmatch(name) or name.lower() in reserved:
            raise HeaderValueError(
                f"Header name {name[:80]!r} is not an X-Casemail-* name this message may carry."
            )
        message[name] = _header_text(name, value)


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
