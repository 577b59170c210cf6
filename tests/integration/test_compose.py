"""Sending email from the case page, the case page's Mail and Approvals, the case type's
sending account."""

from __future__ import annotations

import hashlib
import io
import re
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tests.fixtures.app import both_databases, csrf_token
from tests.fixtures.cases import load_case
from webapp.extensions import db
from webapp.models import (
    Approval,
    Case,
    CaseEvent,
    CaseType,
    EmailAccount,
    OutboundKind,
    OutboundMessage,
    OutboundStatus,
)
from webapp.models.types import utcnow
from webapp.services.compose import parse_addresses
from webapp.services.instantiation import create_cases_from_email


def _with_account(app, make_account, type_id: int, email: str = "support@example.com") -> int:
    account_id = make_account(smtp_email=email)
    with app.app_context():
        case_type = db.session.get(CaseType, type_id)
        case_type.email_account_id = account_id
        db.session.commit()
    return account_id


def _approval(case: Case, approver: str, **values: Any) -> Approval:
    """A request to `approver` in the case's current stage visit (pending unless `values`
    say otherwise)."""
    return Approval(
        case_id=case.id,
        approver=approver,
        stage="manager_approval",
        stage_visit=case.stage_visit,
        version_id=case.version_id,
        token_hash=hashlib.sha256(approver.encode()).hexdigest(),
        expires_at=utcnow() + timedelta(days=3),
        **values,
    )


@pytest.fixture
def sendable_case(app, make_account, make_case_type, make_case) -> str:
    """A case whose case type sends from an account; its reference."""
    type_id = make_case_type()
    _with_account(app, make_account, type_id)
    return make_case(type_id)


def _post(client, reference: str, **values):
    data = {"to": "", "cc": "", "subject": "Hello", "body": "Text", **values}
    data.setdefault("csrf_token", csrf_token(client, f"/cases/{reference}/email"))
    return client.post(f"/cases/{reference}/email", data=data)


def _outbound(app) -> list[OutboundMessage]:
    with app.app_context():
        rows = list(db.session.scalars(select(OutboundMessage).order_by(OutboundMessage.id)))
        db.session.expunge_all()
        return rows


@both_databases
def test_compose_queues_one_message_with_attachments_and_a_timeline_event(
    app, client, login_as, make_case_type, make_case, make_account
):
    type_id = make_case_type()
    account_id = _with_account(app, make_account, type_id)
    reference = make_case(type_id, requester="claire@example.com")
    user = login_as("worker")
    for name in ("receipt.pdf", "photo.jpg"):
        client.post(
            f"/cases/{reference}/attachments",
            data={
                "csrf_token": csrf_token(client, f"/cases/{reference}"),
                "file": (io.BytesIO(b"data of " + name.encode()), name),
            },
            content_type="multipart/form-data",
        )
    page = client.get(f"/cases/{reference}/email").get_data(as_text=True)
    assert 'value="claire@example.com"' in page
    assert 'value="Re: Train tickets"' in page
    assert "{{ amount }}" in page and "120.50" in page  # placeholders with their values
    with app.app_context():
        receipt_id = (
            db.session.scalar(select(Case).where(Case.reference == reference)).attachments[0].id
        )

    response = _post(
        client,
        reference,
        to="Claire <Claire@Example.com>, boss@example.com",
        cc="finance@example.com",
        subject="About {{ case_id }}: {{ amount }}",
        body="Dear {{ requester }},\nyour claim of {{ amount }} for {{ category }} is in.",
        attachments=str(receipt_id),
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"/cases/{reference}#mail"

    [message] = _outbound(app)
    assert message.kind == OutboundKind.COMPOSED.value
    assert message.automatic is False
    assert message.account_id == account_id
    assert message.recipients == ["claire@example.com", "boss@example.com"]
    assert message.cc == ["finance@example.com"]
    assert message.subject == f"About [{reference}]: 120.50"
    assert message.body == ("Dear claire@example.com,\nyour claim of 120.50 for Travel is in.")
    assert message.attachment_ids == [receipt_id]
    assert message.attach_case_files is False
    assert message.message_id and message.message_id.startswith("<")
    assert message.created_by_id == user.id
    assert message.status == OutboundStatus.PENDING.value

    case = load_case(app, reference)
    event = case.events[-1]
    assert (event.kind, event.channel, event.action, event.actor) == (
        "email",
        "web",
        "Email out",
        user.email,
    )
    assert "To: claire@example.com, boss@example.com" in event.comment
    assert f"Subject: About [{reference}]: 120.50" in event.comment
    assert "Attached: receipt.pdf" in event.comment

    html = client.get(f"/cases/{reference}").get_data(as_text=True)
    assert "Email to claire@example.com, boss@example.com queued" in html
    mail = html[html.index('id="mail"') : html.index('id="timeline"')]
    assert f"About [{reference}]: 120.50" in mail and ">pending<" in mail
    assert "composed" in mail


def test_bad_addresses_header_injection_and_placeholders_are_refused_beside_the_fields(
    app, client, login_as, sendable_case
):
    reference = sendable_case
    login_as("worker")

    cases = [
        ({"to": "not an address"}, "to", "is not a valid email address"),
        ({"to": "a@example.com, b@"}, "to", "'b@' is not a valid email address"),
        ({"to": "Eve <eve@example.com>\r\nBcc: x@example.com"}, "to", "is not a valid"),
        ({"to": '"a b"@example.com'}, "to", "is not a valid"),
        ({"to": "a@example.com", "cc": "c@@example.com"}, "cc", "is not a valid"),
        ({"to": ""}, "to", "Enter at least one address to send to."),
        (
            {"to": "a@example.com", "subject": "Hi\r\nBcc: victim@example.com"},
            "subject",
            "The subject must be a single line",
        ),
        ({"to": "a@example.com", "body": "  "}, "body", "Write the message."),
        (
            {"to": "a@example.com", "body": "Amount {{ amout }}"},
            "body",
            "Unknown placeholder {{ amout }}",
        ),
        (
            {"to": "a@example.com", "subject": "{{ secret_key }}"},
            "subject",
            "Unknown placeholder {{ secret_key }}",
        ),
        ({"to": "a@example.com", "attachments": "999"}, "attachments", "this case's files"),
    ]
    for values, field, message in cases:
        response = _post(client, reference, **values)
        assert response.status_code == 400, values
        html = response.get_data(as_text=True)
        # The message sits in the invalid-feedback block right after the field's input.
        feedback = re.search(
            rf'name="{field}".*?class="invalid-feedback[^"]*"[^>]*>(.*?)</div>', html, re.S
        )
        if field == "attachments":
            feedback = re.search(r'class="invalid-feedback d-block">(.*?)</div>', html, re.S)
        assert feedback, (values, html[-3000:])
        assert message in feedback.group(1).replace("&#39;", "'").replace("&#34;", '"'), values
    assert _outbound(app) == []
    assert all(e.kind != "email" for e in load_case(app, reference).events)


def test_addresses_are_parsed_strictly():
    assert parse_addresses("a@example.com; B <B@Example.COM>\nc@ex-ample.co.uk") == [
        "a@example.com",
        "b@example.com",
        "c@ex-ample.co.uk",
    ]
    assert parse_addresses("a@example.com, a@example.com") == ["a@example.com"]
    for bad in (
        "a@example",
        "a@localhost",
        "a b@example.com",
        "<a@example.com",
        "a@example.com>",
        "a@exa_mple.com",
        "Group: a@example.com;",
        "a@example.com\0",
        "jörg@example.com",
    ):
        try:
            parse_addresses(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


def test_without_a_sending_account_the_form_explains_how_to_set_one(
    app, client, login_as, make_case_type, make_case
):
    type_id = make_case_type()
    reference = make_case(type_id)
    login_as("worker")
    page = client.get(f"/cases/{reference}/email").get_data(as_text=True)
    assert "This case cannot send email yet." in page
    assert "has no sending account" in page and "(Sending account)" in page
    response = _post(client, reference, to="a@example.com")
    assert response.status_code == 400
    assert _outbound(app) == []


def test_only_workers_and_admins_compose_and_csrf_is_required(
    app, client, login_as, sendable_case, auth
):
    reference = sendable_case
    designer = login_as("designer")
    assert client.get(f"/cases/{reference}/email").status_code == 403
    token = csrf_token(client, "/account")
    response = client.post(
        f"/cases/{reference}/email",
        data={"to": "a@example.com", "subject": "Hi", "body": "x", "csrf_token": token},
    )
    assert response.status_code == 403
    auth.logout()
    assert client.get(f"/cases/{reference}/email").status_code == 302  # to the login page
    login_as("admin")
    response = client.post(
        f"/cases/{reference}/email",
        data={"to": "a@example.com", "subject": "Hi", "body": "x", "csrf_token": "forged"},
    )
    assert response.status_code == 400
    assert _outbound(app) == []
    assert _post(client, reference, to="a@example.com").status_code == 302
    assert len(_outbound(app)) == 1
    assert designer.email not in str(_outbound(app)[0].recipients)


def test_case_page_shows_a_failed_messages_server_answer_and_the_approvals(
    app, client, login_as, sendable_case
):
    reference = sendable_case
    login_as("worker")
    _post(client, reference, to="nobody@example.com", subject="Lost")
    with app.app_context():
        message = db.session.scalar(select(OutboundMessage))
        message.status = OutboundStatus.FAILED.value
        message.last_error = "550 5.1.1 <nobody@example.com>: Recipient address rejected"
        case = db.session.scalar(select(Case).where(Case.reference == reference))
        db.session.add_all(
            [
                _approval(
                    case,
                    "manager@example.com",
                    status="approved",
                    used_at=utcnow(),
                    decided_via="email",
                    comment="Fine by me",
                ),
                _approval(case, "deputy@example.com"),
                CaseEvent(
                    case_id=case.id,
                    kind="refused",
                    actor="mallory@example.com",
                    channel="email",
                    action="Decision refused",
                    comment="The sender is not the approver.",
                ),
            ]
        )
        db.session.commit()
    html = client.get(f"/cases/{reference}").get_data(as_text=True)
    mail = html[html.index('id="mail"') : html.index('id="timeline"')]
    assert ">failed<" in mail
    assert "550 5.1.1 &lt;nobody@example.com&gt;: Recipient address rejected" in mail
    approvals = html[html.index('id="approvals"') : html.index('id="timeline"')]
    assert "Manager approval" in approvals
    assert "manager@example.com" in approvals and ">approved<" in approvals
    assert "via email" in approvals and "Fine by me" in approvals
    assert "deputy@example.com" in approvals and ">pending<" in approvals
    timeline = html[html.index('id="timeline"') :]
    assert ">refused<" in timeline and "The sender is not the approver." in timeline
    assert ">email<" in timeline and "Email out" in timeline


def test_case_type_sending_account_is_picked_on_its_page(
    app, client, login_as, make_case_type, make_account, auth
):
    type_id = make_case_type()
    sender = make_account("mail-out", smtp_email="out@example.com")
    login_as("designer")
    page = client.get(f"/case-types/{type_id}").get_data(as_text=True)
    assert "Sending account" in page and "mail-out: out@example.com" in page
    token = csrf_token(client, f"/case-types/{type_id}")
    url = f"/case-types/{type_id}/sending-account"
    response = client.post(url, data={"csrf_token": token, "account_id": sender})
    assert response.status_code == 302
    with app.app_context():
        assert db.session.get(CaseType, type_id).email_account_id == sender
    page = client.get(f"/case-types/{type_id}").get_data(as_text=True)
    assert f'<option selected value="{sender}">' in page

    response = client.post(url, data={"csrf_token": token, "account_id": "99999"})
    assert response.status_code == 400
    assert "Choose an account that can send, from the list." in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(CaseType, type_id).email_account_id == sender

    response = client.post(url, data={"csrf_token": token, "account_id": "0"})
    assert response.status_code == 302
    with app.app_context():
        assert db.session.get(CaseType, type_id).email_account_id is None
    assert client.post(url, data={"account_id": sender}).status_code == 400  # no CSRF token

    auth.logout()
    login_as("worker")
    token = csrf_token(client, "/account")
    response = client.post(url, data={"csrf_token": token, "account_id": sender})
    assert response.status_code == 403


def test_create_cases_from_email_sets_the_sending_account_only_when_empty(
    app, make_user, make_account, make_case_type
):
    first = make_account("first")
    second = make_account("second")
    type_id = make_case_type()
    admin = make_user("admin")
    with app.app_context():
        case_type = db.session.get(CaseType, type_id)
        user = db.session.merge(admin)
        create_cases_from_email(case_type, db.session.get(EmailAccount, first), "INBOX", user)
        create_cases_from_email(case_type, db.session.get(EmailAccount, second), "INBOX", user)
        db.session.commit()
        assert db.session.get(CaseType, type_id).email_account_id == first
