"""`flask demo seed` and the demo's mail: a request sent to the sandbox becomes a case."""

from __future__ import annotations

from sqlalchemy import func, select

from tests.fixtures.app import csrf_token
from tests.fixtures.cases import form_data
from webapp.extensions import db
from webapp.mail.sandbox import Sandbox
from webapp.models import (
    Case,
    CaseType,
    EmailAccount,
    EmailListener,
    InboundMessage,
    OutboundKind,
    OutboundMessage,
    ServiceEmailRule,
)
from workers.queues import INBOUND
from workers.worker import run_worker


def _counts(app) -> list[int]:
    """How many accounts, rules and listeners there are."""
    with app.app_context():
        return [
            db.session.scalar(select(func.count()).select_from(model)) or 0
            for model in (EmailAccount, ServiceEmailRule, EmailListener)
        ]


def test_demo_seed_sets_up_the_demo_mailbox_once(app, runner):
    app.config["CASEMAIL_DEV_SMTP_PORT"] = 8025
    first = runner.invoke(args=["demo", "seed"])
    assert first.exit_code == 0, first.output
    assert "Demo mailbox: support@casemail.test, sending through the sandbox" in first.output
    assert "Demo intake: mail to support@casemail.test opens an Expense approval case" in (
        first.output
    )
    assert _counts(app) == [1, 1, 1]
    with app.app_context():
        account = db.session.scalar(select(EmailAccount))
        assert (account.account_id, account.name, account.smtp_email) == (
            "demo-mailbox",
            "Demo mailbox",
            "support@casemail.test",
        )
        assert (account.smtp_host, account.smtp_port, account.smtp_security, account.smtp_auth) == (
            "127.0.0.1",
            8025,
            "none",
            "none",
        )
        case_type = db.session.scalar(select(CaseType))
        assert case_type.name == "Expense approval" and case_type.email_account_id == account.id
        listener = db.session.scalar(select(EmailListener))
        assert listener.name == "Demo intake" and listener.account_id == account.id
        assert listener.enabled is False and listener.use_idle is False  # never polled
        rule = listener.rule
        assert rule.case_type_id == case_type.id and rule.send_ack
        assert {m["field"]: m["value"] for m in rule.field_mappings} == {
            "amount": "Amount",
            "expense_date": "Date",
            "category": "Category",
            "manager_email": "Approver",
            "notes": "Notes",
        }

    second = runner.invoke(args=["demo", "seed"])
    assert second.exit_code == 0, second.output
    assert "Demo mailbox" not in second.output
    assert _counts(app) == [1, 1, 1]


def test_a_request_sent_from_the_mailbox_page_becomes_a_case(
    app, client, runner, login_as, sandbox_server
):
    assert runner.invoke(args=["demo", "seed"]).exit_code == 0
    login_as("admin")
    # The Send form's defaults are the demo's expense request.
    page = client.get("/dev/mailbox").get_data(as_text=True)
    assert 'value="support@casemail.test"' in page and "Amount: 120.50" in page
    filled = form_data(page[page.index('action="/dev/mailbox/send"') :])
    response = client.post(
        "/dev/mailbox/send", data={**filled, "csrf_token": csrf_token(client, "/dev/mailbox")}
    )
    assert response.status_code == 302

    with app.app_context():
        inbound = db.session.scalar(select(InboundMessage))
        assert inbound.listener_id is not None and inbound.status == "received"
    assert run_worker(app, [INBOUND], burst=True) is True

    with app.app_context():
        case = db.session.scalar(select(Case))
        assert case is not None, db.session.scalar(select(InboundMessage.status_reason))
        assert (case.reference, case.subject, case.requester) == (
            "EXP-1001",
            "Expense: train tickets",
            "requester@example.com",
        )
        assert case.fields["amount"] == "120.50"
        assert case.fields["category"] == "Travel"
        assert case.fields["manager_email"] == "manager@example.com"
        assert case.email_account.account_id == "demo-mailbox"
        ack = db.session.scalar(select(OutboundMessage))
        assert ack.kind == OutboundKind.ACKNOWLEDGEMENT.value
        assert ack.recipients == ["requester@example.com"]
        assert ack.subject == "[EXP-1001] We have your request: Expense: train tickets"

    entries = Sandbox(app.config["CASEMAIL_DEV_MAILDIR"]).entries()
    assert "for the listener Demo intake" in entries[0].intake_note
