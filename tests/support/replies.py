"""Approval requests and the replies to them, through the stored-message path of ingest
(no mail servers): open a case, read its request from the outbox, reply as a mail program
would, ingest the reply."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formataddr
from typing import Any

from flask import Flask
from sqlalchemy import select

from tests.support.approvals import (
    MAILBOX_ADDRESS,
    MANAGER,
    REQUESTER,
    approval_draft,
    reply_message,
)
from webapp.extensions import db
from webapp.mail.correlate import plus_address
from webapp.models import (
    Approval,
    Case,
    CaseEvent,
    CaseType,
    EmailListener,
    InboundMessage,
    OutboundKind,
    OutboundMessage,
)
from webapp.secretbox import get_secretbox
from webapp.services import cases as case_service
from webapp.services.ingest import ingest_message
from webapp.services.intake import store_for_listener


@dataclass(frozen=True)
class Request:
    """An approval request as the approver receives it (the token from the Reply-To)."""

    reference: str
    approver: str
    token: str
    message_id: str
    subject: str
    body: str


@dataclass
class Desk:
    app: Flask
    case_type_id: int
    account_id: int
    listener_id: int

    def open_case(self, manager: str = MANAGER, subject: str = "Train tickets") -> str:
        with self.app.app_context():
            case_type = db.session.get(CaseType, self.case_type_id)
            assert case_type is not None
            case = case_service.open_case(
                case_type,
                {"amount": "120.50", "category": "Travel", "manager_email": manager},
                subject=subject,
                requester=REQUESTER,
                user=None,
            )
            db.session.commit()
            return case.reference

    def request(self, reference: str, approver: str = MANAGER) -> Request:
        """The newest approval request of the case to `approver`."""
        with self.app.app_context():
            rows = [
                row
                for row in self._outbox(reference)
                if row.kind == OutboundKind.APPROVAL_REQUEST.value and row.recipients == [approver]
            ]
            assert rows, f"no approval request of {reference} to {approver}"
            row = rows[-1]
            assert row.token_encrypted and row.message_id
            token = get_secretbox().decrypt(row.token_encrypted)
            return Request(reference, approver, token, row.message_id, row.subject, row.body)

    def reply(
        self,
        request: Request,
        first_line: str,
        *,
        sender: str = MANAGER,
        from_header: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> bytes:
        """A reply to `request` as a mail program writes it: to the token's Reply-To, the new
        text on top and the request quoted below."""
        return reply_message(
            first_line,
            from_header=from_header or formataddr(("The Approver", sender)),
            to=plus_address(MAILBOX_ADDRESS, request.token),
            subject=f"Re: {request.subject}",
            answered=request.message_id,
            headers=headers,
            attribution="On Sat, 21 Nov 2026, Casemail wrote:",
            quoted=request.body,
        )

    def store(self, raw: bytes) -> int:
        with self.app.app_context():
            listener = db.session.get(EmailListener, self.listener_id)
            assert listener is not None
            inbound = store_for_listener(raw, "mta", listener)
            db.session.commit()
            return inbound.id

    def ingest(self, raw: bytes) -> InboundMessage:
        """Store `raw` for the listener and ingest it, each step committed; the stored row."""
        inbound_id = self.store(raw)
        with self.app.app_context():
            ingest_message(inbound_id)
            db.session.commit()
            inbound = db.session.get(InboundMessage, inbound_id)
            assert inbound is not None
            db.session.expunge(inbound)
            return inbound

    def case(self, reference: str) -> Case:
        with self.app.app_context():
            case = case_service.find_case(reference)
            assert case is not None
            db.session.expunge(case)
            return case

    def events(self, reference: str, kind: str | None = None) -> list[CaseEvent]:
        with self.app.app_context():
            case = case_service.find_case(reference)
            assert case is not None
            events = [e for e in case.events if kind is None or e.kind == kind]
            db.session.expunge_all()
            return events

    def approvals(self, reference: str) -> dict[str, Approval]:
        with self.app.app_context():
            case = case_service.find_case(reference)
            assert case is not None
            rows = db.session.scalars(
                select(Approval).where(Approval.case_id == case.id).order_by(Approval.id)
            )
            found = {row.approver: row for row in rows}
            db.session.expunge_all()
            return found

    def answers(self, reference: str) -> list[OutboundMessage]:
        """The answers to approvers' replies queued for the case, oldest first."""
        with self.app.app_context():
            rows = [r for r in self._outbox(reference) if r.kind == OutboundKind.ANSWER.value]
            db.session.expunge_all()
            return rows

    def outbox(self, reference: str) -> list[OutboundMessage]:
        with self.app.app_context():
            rows = self._outbox(reference)
            db.session.expunge_all()
            return rows

    def _outbox(self, reference: str) -> list[OutboundMessage]:
        case = case_service.find_case(reference)
        assert case is not None
        return list(
            db.session.scalars(
                select(OutboundMessage)
                .where(OutboundMessage.case_id == case.id)
                .order_by(OutboundMessage.id)
            )
        )


def set_up_desk(
    app: Flask,
    make_account: Any,
    make_case_type: Any,
    *,
    definition: dict[str, Any] | None = None,
    prefix: str = "EXP",
    **account_fields: Any,
) -> Desk:
    """A published approval case type sending from an account of MAILBOX_ADDRESS, and a
    listener of that account (with a rule that opens cases of the type)."""
    from tests.support.inbound import make_route

    address = MAILBOX_ADDRESS
    account_id = make_account(smtp_email=address, smtp_user_id=address, **account_fields)
    case_type_id = make_case_type(
        f"Expenses {prefix}", prefix, draft=definition or approval_draft(copy_requester=True)
    )
    with app.app_context():
        case_type = db.session.get(CaseType, case_type_id)
        assert case_type is not None
        case_type.email_account_id = account_id
        db.session.commit()
    listener_id = make_route(app, account_id, case_type_id, name=f"Expenses {prefix} by email")
    return Desk(app, case_type_id, account_id, listener_id)
