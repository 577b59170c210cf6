"""Incoming messages for tests: build one, store it for a listener, route it with a rule."""

from __future__ import annotations

from typing import Any

from flask import Flask
from sqlalchemy.orm import joinedload

from webapp.extensions import db
from webapp.models import EmailListener, InboundMessage
from webapp.services import rules as rule_service
from webapp.services.intake import store_inbound


def message(
    subject: str = "Taxi to the airport",
    body: str = "Amount: 42.50\nCategory: Travel\n",
    sender: str = "alice@example.com",
    message_id: str = "<m1@example.com>",
    headers: str = "",
) -> bytes:
    """A plain text message; `headers` are extra lines (each ending in CRLF)."""
    head = (
        f"From: Alice <{sender}>\r\nTo: expenses@casemail.test\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\nDate: Sat, 21 Nov 2026 08:00:00 +0000\r\n{headers}"
    )
    return (head + "\r\n" + body.replace("\n", "\r\n")).encode()


def make_route(app: Flask, account_id: int, case_type_id: int | None, **rule: Any) -> int:
    """A rule (defaults: open an expense case, amount and category from Key: Value lines)
    and a listener using it; returns the listener id."""
    with app.app_context():
        data = rule_service.RuleData(
            name=rule.pop("name", "Expenses by email"),
            action=rule.pop("action", "create_case"),
            case_type_id=case_type_id,
            mappings=rule.pop(
                "mappings",
                [
                    {"field": "amount", "source": "body_key", "value": "Amount"},
                    {"field": "category", "source": "body_key", "value": "Category"},
                ],
            ),
            **rule,
        )
        saved = rule_service.save_rule(None, data)
        listener = EmailListener(
            name=f"Listener for {saved.name}", account_id=account_id, rule_id=saved.id
        )
        db.session.add(listener)
        db.session.commit()
        return listener.id


def store(app: Flask, raw: bytes, listener_id: int | None) -> int:
    """Store `raw` as received for the listener; returns the InboundMessage id."""
    with app.app_context():
        inbound = store_inbound(raw, "mta")
        if listener_id is not None:
            listener = db.session.get(EmailListener, listener_id)
            assert listener is not None
            inbound.listener_id = listener.id
            inbound.account_id = listener.account_id
        db.session.commit()
        return inbound.id


def load(app: Flask, inbound_id: int) -> InboundMessage:
    with app.app_context():
        # With its bytes, which a detached message could not load later.
        inbound = db.session.get(
            InboundMessage, inbound_id, options=[joinedload(InboundMessage.stored)]
        )
        assert inbound is not None
        db.session.expunge(inbound)
        return inbound
