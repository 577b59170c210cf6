"""Email written by a person on the case page, and the account a case type's mail goes out from.

A composed message goes through the outbox like every other outgoing message: it is written
in the transaction that records it on the case's timeline and sent by the sender job after
the commit. Its subject carries the case id and its Message-ID is our own, so that replies
come back to the same case.
"""

from __future__ import annotations

import email.policy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.errors import HeaderParseError

from sqlalchemy import select
from sqlalchemy.orm import selectinload
from sqlalchemy.orm.exc import StaleDataError

from webapp.casetypes.templating import BUILTIN_NAMES, placeholders, render
from webapp.extensions import db
from webapp.models import (
    Case,
    CaseEvent,
    CaseType,
    EmailAccount,
    OutboundKind,
    OutboundMessage,
    User,
)
from webapp.models.types import utcnow
from webapp.services.cases import AlreadyProcessed, actor_for, definition_of
from webapp.services.outbox import one_line, queue_message, sending_account

MAX_RECIPIENTS = 50
MAX_SUBJECT = 300
MAX_BODY = 100_000
MAX_EVENT_TEXT = 2000

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# What the sender accepts (webapp.mail.outbound): a dot-atom local part (no quoted local
# parts, no non-ASCII) and an ASCII domain with at least two labels.
_ADDRESS_RE = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})+")
_SEPARATORS = re.compile(r"[,;\n]")
_HEADER_BREAKS = ("\r", "\n", "\0")

BUILTIN_LABELS = {
    "case_id": "Case id",
    "case_type": "Case type",
    "subject": "Case subject",
    "requester": "Requester",
    "stage": "Current stage",
}


class ComposeError(ValueError):
    """The message was not queued; `field_errors` say which field to change and how."""

    def __init__(self, message: str, field_errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.field_errors = field_errors or {}


@dataclass(frozen=True)
class Placeholder:
    name: str
    label: str
    value: str


def parse_addresses(text: str, *, what: str = "Recipients") -> list[str]:
    """The addresses in `text` (separated by commas, semicolons or lines), lower-cased.

    Each entry is `someone@example.com` or `Name <someone@example.com>`; raises ValueError
    naming the first entry that is not exactly one valid address.
    """
    addresses: list[str] = []
    for entry in (e.strip() for e in _SEPARATORS.split(text.replace("\r", "\n"))):
        if not entry:
            continue
        address = _single_address(entry)
        if address is None:
            shown = entry if len(entry) <= 80 else entry[:77] + "..."
            raise ValueError(
                f"{shown!r} is not a valid email address. Separate addresses with commas, "
                "for example: anna@example.com, Ben <ben@example.com>."
            )
        if address not in addresses:
            addresses.append(address)
    if len(addresses) > MAX_RECIPIENTS:
        raise ValueError(f"{what}: at most {MAX_RECIPIENTS} addresses.")
    return addresses


def _single_address(entry: str) -> str | None:
    if any(ch in entry for ch in _HEADER_BREAKS) or len(entry) > 400:
        return None
    try:
        header = email.policy.default.header_factory("to", entry)
        groups = header.groups
    except (ValueError, TypeError, IndexError, HeaderParseError):
        return None
    if header.defects or len(groups) != 1 or groups[0].display_name is not None:
        return None
    if len(groups[0].addresses) != 1:
        return None
    address = groups[0].addresses[0].addr_spec
    if len(address) > 320 or not _ADDRESS_RE.fullmatch(address):
        return None
    return address.lower()


def case_placeholders(case: Case) -> list[Placeholder]:
    """The `{{ name }}` placeholders a message about `case` may use, with their values now."""
    definition = definition_of(case)
    try:
        stage_name = definition.stage(case.stage).name
    except KeyError:
        stage_name = case.stage
    builtin = {
        "case_id": case.reference,
        "case_type": case.case_type.name,
        "subject": case.subject,
        "requester": case.requester,
        "stage": stage_name,
    }
    found = [Placeholder(n, BUILTIN_LABELS[n], builtin[n]) for n in BUILTIN_NAMES]
    fields = case.fields or {}
    found.extend(
        Placeholder(f.name, f.label, str(fields.get(f.name, "") or ""))
        for f in definition.fields
        if f.name not in BUILTIN_NAMES
    )
    return found


def send_from_case(
    case: Case,
    user: User,
    *,
    to: str,
    cc: str = "",
    subject: str,
    body: str,
    attachment_ids: Sequence[int] = (),
) -> OutboundMessage:
    """Queue a message a person wrote about `case` and put it on the timeline (flushes).

    `to` and `cc` are address lists as typed; the subject and body may use the case's
    placeholders. Raises ComposeError (with field errors) when a value is refused or the
    case has no account to send from, AlreadyProcessed when the case changed at the same time.
    """
    errors: dict[str, str] = {}
    recipients: list[str] = []
    copies: list[str] = []
    try:
        recipients = parse_addresses(to, what="To")
    except ValueError as exc:
        errors["to"] = str(exc)
    else:
        if not recipients:
            errors["to"] = "Enter at least one address to send to."
    try:
        copies = parse_addresses(cc, what="Cc")
    except ValueError as exc:
        errors["cc"] = str(exc)
    if any(ch in subject for ch in _HEADER_BREAKS):
        errors["subject"] = "The subject must be a single line: remove the line breaks."
    elif not subject.strip():
        errors["subject"] = "Enter a subject."
    elif len(subject) > MAX_SUBJECT:
        errors["subject"] = f"Keep the subject under {MAX_SUBJECT} characters."
    if not body.strip():
        errors["body"] = "Write the message."
    elif len(body) > MAX_BODY:
        errors["body"] = f"Keep the message under {MAX_BODY:,} characters."
    values = case_placeholders(case)
    known = {p.name for p in values}
    for field, text in (("subject", subject), ("body", body)):
        unknown = [n for n in dict.fromkeys(placeholders(text)) if n not in known]
        if unknown and field not in errors:
            names = ", ".join(f"{{{{ {n} }}}}" for n in unknown)
            errors[field] = (
                f"Unknown placeholder {names}: use one of the names listed beside the form."
            )
    by_id = {a.id: a for a in case.attachments}
    chosen = list(dict.fromkeys(attachment_ids))
    if any(i not in by_id for i in chosen):
        errors["attachments"] = "Choose among this case's files."
    account = sending_account(case)
    if account is None:
        errors.setdefault("to", no_account_message(case))
    if errors:
        raise ComposeError("The message was not sent: " + " ".join(errors.values()), errors)

    mapping = {p.name: p.value for p in values}
    outbound = queue_message(
        case,
        kind=OutboundKind.COMPOSED,
        recipients=recipients,
        cc=copies,
        subject=one_line(render(subject, mapping)),
        body=render(body, mapping),
        automatic=False,
        attachment_ids=chosen,
        created_by=user,
    )
    summary = f"To: {', '.join(recipients)}"
    if copies:
        summary += f"\nCc: {', '.join(copies)}"
    summary += f"\nSubject: {outbound.subject}"
    if chosen:
        summary += f"\nAttached: {', '.join(by_id[i].filename for i in chosen)}"
    actor = actor_for(user, "web")
    db.session.add(
        CaseEvent(
            case=case,
            kind="email",
            actor_id=user.id,
            actor=actor.email,
            channel="web",
            action="Email out",
            comment=summary[:MAX_EVENT_TEXT],
            created_at=utcnow(),
        )
    )
    case.updated_at = utcnow()
    message = f"{case.reference} was changed by someone else at the same time; try again."
    try:
        db.session.flush()
    except StaleDataError:
        raise AlreadyProcessed(message) from None
    return outbound


def no_account_message(case: Case) -> str:
    """Why `case` cannot send mail, and how to fix it."""
    return (
        f"{case.reference} has no email account to send from: it did not arrive by email, "
        f"and its case type {case.case_type.name} has no sending account. An admin or "
        "designer sets one on the case type's page (Sending account)."
    )


def case_mail(case: Case) -> list[OutboundMessage]:
    """The case's outgoing messages, newest first."""
    return list(
        db.session.scalars(
            select(OutboundMessage)
            .options(selectinload(OutboundMessage.created_by))
            .where(OutboundMessage.case_id == case.id)
            .order_by(OutboundMessage.created_at.desc(), OutboundMessage.id.desc())
        )
    )


# The case type's sending account ---------------------------------------------------------


def has_sender(account: EmailAccount) -> bool:
    """Whether the account is set up to send (an SMTP server, or Microsoft Graph)."""
    if account.sender_protocol == "graph":
        return bool(account.graph_sender_upn)
    return account.sender_protocol == "smtp" and bool(account.smtp_host and account.smtp_email)


def sending_accounts() -> list[EmailAccount]:
    """Accounts with a sender, the ones a case type's mail can go out from."""
    accounts = db.session.scalars(select(EmailAccount).order_by(EmailAccount.account_id))
    return [a for a in accounts if has_sender(a)]


def set_sending_account(case_type: CaseType, account: EmailAccount | None) -> None:
    """Make `account` (or none) the case type's sending account (flushes); raises
    ComposeError when the account cannot send."""
    if account is not None and not has_sender(account):
        raise ComposeError(
            f"The account {account.account_id} has no sender set up: give it an SMTP server "
            "or Microsoft Graph sending first.",
            {"account_id": "Choose an account that can send."},
        )
    case_type.email_account = account
    db.session.flush()
