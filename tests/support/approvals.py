"""The approval loop for tests: a case type whose cases wait for approval, a mailbox and a
listener on Dovecot, the SMTP capture, and replies built the way a mail client builds them."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from typing import Any
from urllib.parse import urlsplit

from flask import Flask
from sqlalchemy import select

from tests.fixtures.dovecot import DovecotServer, MailboxUser
from tests.fixtures.smtp import CapturedMessage, SmtpServer
from webapp.extensions import db
from webapp.models import Approval, Case, CaseEvent, InboundMessage, OutboundMessage
from webapp.services import casetypes as casetype_service
from webapp.services import rules as rule_service
from webapp.services.cases import find_case
from workers.listeners import enqueue_poll
from workers.queues import ALL_QUEUES
from workers.worker import run_worker

REQUESTER = "alice@customer.example"
MANAGER = "manager@example.com"
MAILBOX_ADDRESS = "expenses@example.com"
LINK_RE = re.compile(r"https?://[^\s<>\"']+/approvals/[A-Za-z0-9_.\-]+")


def approval_draft(
    *,
    approvers: Sequence[str] = (),
    mode: str = "any",
    reason_required: bool = True,
    copy_requester: bool = False,
) -> dict[str, Any]:
    """A case type whose first stage asks for approval: by the manager named in the request,
    or by fixed `approvers` (and tells the requester too with `copy_requester`); approving
    moves it to Payment, rejecting resolves it."""
    approval: dict[str, Any] = {
        "key": "manager_approval",
        "name": "Manager approval",
        "kind": "approval",
        "approval_mode": mode,
        "reject_to": "rejected",
        "reason_required": reason_required,
        "notifications": [
            {
                "recipients": ["approvers", "requester"] if copy_requester else ["approvers"],
                "subject": "Approve {{ case_id }}: {{ amount }} for {{ category }}",
                "body": "{{ requester }} asks you to approve {{ amount }} ({{ category }}).",
            }
        ],
    }
    if approvers:
        approval.update(approver_source="addresses", approvers=list(approvers))
    else:
        approval.update(approver_source="field", approver_field="manager_email")
    return {
        "fields": [
            {"name": "amount", "label": "Amount", "type": "money", "required": True},
            {
                "name": "category",
                "label": "Category",
                "type": "choice",
                "required": True,
                "options": ["Travel", "Meals", "Other"],
            },
            {"name": "manager_email", "label": "Manager's email", "type": "email"},
        ],
        "stages": [
            approval,
            {
                "key": "payment",
                "name": "Payment",
                "kind": "work",
                "assignee_kind": "role",
                "assignee": "worker",
                "actions": [{"name": "Mark paid", "to": "completed"}],
                "notifications": [
                    {
                        "recipients": ["requester"],
                        "subject": "{{ case_id }} is approved",
                        "body": "Your request {{ case_id }} was approved and goes to payment.",
                    }
                ],
            },
            {"key": "completed", "name": "Paid", "kind": "resolution", "resolution": "completed"},
            {
                "key": "rejected",
                "name": "Rejected",
                "kind": "resolution",
                "resolution": "rejected",
                "notifications": [
                    {
                        "recipients": ["requester"],
                        "subject": "{{ case_id }} was rejected",
                        "body": "Your request {{ case_id }} was rejected.",
                    }
                ],
            },
        ],
    }


def request_text(amount: str = "120.50", manager: str = MANAGER) -> str:
    return f"Amount: {amount}\nCategory: Travel\nManager: {manager}\n\nTrain to the customer.\n"


def new_request(
    subject: str = "Train tickets", body: str | None = None, sender: str = REQUESTER
) -> bytes:
    """A requester's first message, as their mail program sends it."""
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = formataddr(("Alice Example", sender))
    msg["To"] = MAILBOX_ADDRESS
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="customer.example")
    msg["Date"] = formatdate(localtime=False)
    msg.set_content(body if body is not None else request_text())
    return msg.as_bytes()


def reply_to(
    captured: CapturedMessage,
    first_line: str,
    *,
    sender: str = MANAGER,
    extra_headers: dict[str, str] | None = None,
    subject: str | None = None,
) -> bytes:
    """A reply to a captured message as a mail program writes it: to its Reply-To, "Re:"
    subject, In-Reply-To / References, the new text on top and the original quoted below."""
    original = captured.parsed
    if subject is None:
        subject = str(original.get("Subject", ""))
        subject = subject if subject.lower().startswith("re:") else f"Re: {subject}"
    return reply_message(
        first_line,
        from_header=formataddr(("The Manager", sender)),
        to=str(original.get("Reply-To") or original.get("From")),
        subject=subject,
        answered=str(original.get("Message-ID", "")).strip(),
        references=str(original.get("References", "")).split(),
        headers=(extra_headers or {}).items(),
        attribution=(
            f"Sent from my phone\n\nOn {original.get('Date')}, {original.get('From')} wrote:"
        ),
        quoted=text_of(captured),
    )


def reply_message(
    first_line: str,
    *,
    from_header: str,
    to: str,
    subject: str,
    answered: str,
    references: Sequence[str] = (),
    headers: Iterable[tuple[str, str]] = (),
    attribution: str,
    quoted: str,
) -> bytes:
    """A reply as a mail program writes it: In-Reply-To / References the `answered`
    Message-ID, the new text on top, then `attribution` and the original text quoted."""
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = from_header
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="example.com")
    msg["Date"] = formatdate(localtime=False)
    if answered:
        msg["In-Reply-To"] = answered
        msg["References"] = " ".join([*references, answered])
    for name, value in headers:
        msg[name] = value
    lines = "\n".join(f"> {line}" for line in quoted.splitlines())
    msg.set_content(f"{first_line}\n\n{attribution}\n{lines}\n")
    return msg.as_bytes()


def text_of(captured: CapturedMessage) -> str:
    """The plain-text body of a captured message (signed or not)."""
    body = captured.parsed.get_body(preferencelist=("plain",))
    assert body is not None, "the message has no text part"
    return str(body.get_content())


def links_in(captured: CapturedMessage) -> dict[str, str]:
    """{"approve": path, "reject": path} of the signed links in a captured request."""
    found: dict[str, str] = {}
    text = text_of(captured)
    for url in LINK_RE.findall(text):
        path = urlsplit(url).path
        # Approve comes first in the request, Reject second.
        found.setdefault("approve" if "approve" not in found else "reject", path)
    return found


def recipients_of(captured: CapturedMessage) -> list[str]:
    return [a.lower() for a in captured.rcpt_tos]


@dataclass
class ApprovalLoop:
    """Everything one end-to-end approval test drives, with the real servers behind it."""

    app: Flask
    dovecot: DovecotServer
    mailbox: MailboxUser
    smtp: SmtpServer
    listener_id: int
    case_type_id: int
    account_id: int
    seen: int = 0  # captured messages already handed out by `new_mail`
    delivered: list[bytes] = field(default_factory=list)

    def deliver(self, raw: bytes) -> None:
        """Put a message into the mailbox the listener reads, as the MTA would."""
        self.dovecot.deliver(self.mailbox.login, raw)
        self.delivered.append(raw)

    def run_jobs(self) -> None:
        """Poll the listener and run every job that follows (ingest, sending) to the end."""
        with self.app.app_context():
            enqueue_poll(self.listener_id)
        run_worker(self.app, ALL_QUEUES, burst=True)

    def deliver_and_process(self, raw: bytes) -> None:
        self.deliver(raw)
        self.run_jobs()

    def new_mail(self, count: int, timeout: float = 5.0) -> list[CapturedMessage]:
        """The next `count` messages the SMTP server captured (waits for them)."""
        messages = self.smtp.wait_for(self.seen + count, timeout)
        fresh = messages[self.seen : self.seen + count]
        self.seen += count
        return fresh

    def no_new_mail(self, wait: float = 0.3) -> list[CapturedMessage]:
        """Messages captured beyond the ones handed out (after a short wait); [] expected."""
        time.sleep(wait)
        return self.smtp.messages[self.seen :]

    def case(self, reference: str) -> Case:
        with self.app.app_context():
            case = find_case(reference)
            assert case is not None, f"no case {reference}"
            db.session.expunge(case)
            return case

    def only_case_reference(self) -> str:
        with self.app.app_context():
            references = list(db.session.scalars(select(Case.reference).order_by(Case.id)))
        assert len(references) >= 1, "no case was opened"
        return references[-1]

    def events(self, reference: str) -> list[CaseEvent]:
        with self.app.app_context():
            case = find_case(reference)
            assert case is not None
            events = list(case.events)
            db.session.expunge_all()
            return events

    def approvals(self, reference: str) -> list[Approval]:
        with self.app.app_context():
            case = find_case(reference)
            assert case is not None
            rows = list(
                db.session.scalars(
                    select(Approval).where(Approval.case_id == case.id).order_by(Approval.id)
                )
            )
            db.session.expunge_all()
            return rows

    def outbox(self) -> list[OutboundMessage]:
        with self.app.app_context():
            rows = list(db.session.scalars(select(OutboundMessage).order_by(OutboundMessage.id)))
            db.session.expunge_all()
            return rows

    def inbound(self) -> list[InboundMessage]:
        with self.app.app_context():
            rows = list(db.session.scalars(select(InboundMessage).order_by(InboundMessage.id)))
            db.session.expunge_all()
            return rows


def set_up_loop(
    app: Flask,
    dovecot: DovecotServer,
    mailbox: MailboxUser,
    smtp: SmtpServer,
    *,
    draft: dict[str, Any] | None = None,
    prefix: str = "EXP",
    account_fields: dict[str, Any] | None = None,
) -> ApprovalLoop:
    """A published approval case type, an account that sends through `smtp` and receives from
    the Dovecot mailbox, a rule that opens cases from the request's `Key: Value` lines, and an
    IMAP listener using it."""
    from webapp.models import EmailListener
    from webapp.services.accounts import save_account

    with app.app_context():
        case_type = casetype_service.create_case_type(
            f"Expense approval {prefix}", prefix, starter="expense-approval"
        )
        casetype_service.save_draft(case_type, draft or approval_draft())
        casetype_service.publish(case_type, None)
        values: dict[str, Any] = {
            "name": "Expenses mailbox",
            "smtp_email": MAILBOX_ADDRESS,
            "smtp_user_id": MAILBOX_ADDRESS,
            "smtp_auth": "none",
            "smtp_host": smtp.host,
            "smtp_port": smtp.port,
            "smtp_security": "none",
            "receiver_protocol": "imap",
            "receiver_host": dovecot.host,
            "receiver_port": dovecot.imap_port,
            "receiver_security": "none",
            "receiver_use_sender_credentials": False,
            "receiver_user_id": mailbox.login,
            **(account_fields or {}),
        }
        account = save_account(
            None,
            f"expenses-{uuid.uuid4().hex[:6]}",
            values,
            {"smtp_password": None, "receiver_password": mailbox.password},
        )
        case_type.email_account_id = account.id
        rule = rule_service.save_rule(
            None,
            rule_service.RuleData(
                name=f"Expenses by email {prefix}",
                action="create_case",
                case_type_id=case_type.id,
                mappings=[
                    {"field": "amount", "source": "body_key", "value": "Amount"},
                    {"field": "category", "source": "body_key", "value": "Category"},
                    {"field": "manager_email", "source": "body_key", "value": "Manager"},
                ],
            ),
        )
        listener = EmailListener(
            name=f"Expenses {prefix}",
            account_id=account.id,
            rule_id=rule.id,
            folder="INBOX",
            after_processing="mark_read",
        )
        db.session.add(listener)
        db.session.commit()
        return ApprovalLoop(
            app=app,
            dovecot=dovecot,
            mailbox=mailbox,
            smtp=smtp,
            listener_id=listener.id,
            case_type_id=case_type.id,
            account_id=account.id,
        )


def link_path(app: Flask, reference: str, decision: str, approver: str = MANAGER) -> str:
    """The path of the signed link the approver's request carries (read from the outbox,
    before the sender erases the token), without sending anything."""
    from webapp.models import OutboundKind
    from webapp.secretbox import get_secretbox
    from webapp.services.approval_links import link_for

    with app.app_context():
        case = find_case(reference)
        assert case is not None
        requests = db.session.scalars(
            select(OutboundMessage).where(
                OutboundMessage.case_id == case.id,
                OutboundMessage.kind == OutboundKind.APPROVAL_REQUEST.value,
            )
        )
        encrypted = next((r.token_encrypted for r in requests if approver in r.recipients), None)
        assert encrypted, f"no unsent approval request to {approver} for {reference}"
        return urlsplit(link_for(get_secretbox().decrypt(encrypted), decision)).path


def addresses(value: str | None) -> list[str]:
    return [address.lower() for _, address in getaddresses([value or ""])]
