"""The development mail sandbox: a real SMTP server, the /dev/mailbox pages, intake delivery."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

from sqlalchemy import select

from tests.fixtures.app import csrf_token
from tests.fixtures.cases import form_data
from tests.support.ports import free_port
from webapp.extensions import db
from webapp.mail.sandbox import Sandbox
from webapp.models import InboundMessage


def _send(app, sender: str, to: str, subject: str, body: str = "Hello", html: str | None = None):
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{subject.replace(' ', '-')}@client.example>"
    message.set_content(body)
    if html:
        message.add_alternative(html, subtype="html")
    with smtplib.SMTP("127.0.0.1", app.config["CASEMAIL_DEV_SMTP_PORT"]) as smtp:
        smtp.send_message(message)


def test_mail_sent_with_smtplib_appears_on_the_page(app, client, login_as, sandbox_server):
    login_as("admin")
    assert "The sandbox is empty" in client.get("/dev/mailbox").get_data(as_text=True)
    _send(app, "system@casemail.test", "someone@example.com", "Your case EXP-1001")
    listing = client.get("/dev/mailbox").get_data(as_text=True)
    assert "Your case EXP-1001" in listing
    assert "From system@casemail.test to someone@example.com" in listing
    with app.app_context():
        assert db.session.scalar(select(InboundMessage)) is None  # not an intake address


def test_mail_to_the_intake_address_reaches_the_application(app, client, login_as, sandbox_server):
    login_as("admin")
    _send(app, "Requester <req@example.com>", "support+expenses@casemail.test", "Need a laptop")
    with app.app_context():
        inbound = db.session.scalar(select(InboundMessage))
        assert inbound is not None
        assert (inbound.source, inbound.subject, inbound.from_address) == (
            "devmail",
            "Need a laptop",
            "req@example.com",
        )
        assert b"Need a laptop" in inbound.raw
        inbound_id = inbound.id
    listing = client.get("/dev/mailbox").get_data(as_text=True)
    assert f"delivered to the application as inbound message #{inbound_id}" in listing


def test_intake_mail_goes_to_the_listener_of_its_address_and_is_queued_for_ingest(
    app, client, login_as, sandbox_server, make_account, make_listener
):
    from webapp.extensions import get_queue
    from workers.queues import INBOUND

    other = make_account(smtp_email="other@casemail.test")
    make_listener(other, name="Other mailbox")
    account = make_account(smtp_email="Support@casemail.test")
    listener_id = make_listener(account, name="Sandbox intake", enabled=False)
    login_as("admin")
    _send(app, "req@example.com", "support@casemail.test", "Plain address")
    _send(app, "manager@example.com", "support+abc123@casemail.test", "Re: Approve EXP-1001")
    with app.app_context():
        stored = list(db.session.scalars(select(InboundMessage).order_by(InboundMessage.id)))
        assert [(m.subject, m.listener_id, m.account_id) for m in stored] == [
            ("Plain address", listener_id, account),
            ("Re: Approve EXP-1001", listener_id, account),
        ]
        jobs = get_queue(INBOUND).jobs
        assert [job.args for job in jobs] == [([stored[0].id],), ([stored[1].id],)]
    listing = client.get("/dev/mailbox").get_data(as_text=True)
    assert f"inbound message #{stored[1].id} for the listener Sandbox intake" in listing


def test_message_view_sanitises_html(app, client, login_as, sandbox_server):
    login_as("admin")
    _send(
        app,
        "a@example.com",
        "b@example.com",
        "Fancy",
        html='<p onclick="x()">Hi</p><script>alert(1)</script>',
    )
    key = Sandbox(app.config["CASEMAIL_DEV_MAILDIR"]).entries()[0].key
    page = client.get(f"/dev/mailbox/{key}").get_data(as_text=True)
    assert "<p>Hi</p>" in page
    assert "alert(1)" not in page and "onclick" not in page


def test_reply_form_sends_a_threaded_reply_through_smtp(app, client, login_as, sandbox_server):
    login_as("admin")
    _send(
        app, "approvals@casemail.test", "manager@example.com", "Approve EXP-1001", "Reply APPROVE"
    )
    key = Sandbox(app.config["CASEMAIL_DEV_MAILDIR"]).entries()[0].key
    page = client.get(f"/dev/mailbox/{key}").get_data(as_text=True)
    assert 'value="manager@example.com"' in page and 'value="Re: Approve EXP-1001"' in page
    assert "approval-hint" not in page  # no reply token: an ordinary message
    response = client.post(
        f"/dev/mailbox/{key}/reply",
        data={
            "from_address": "manager@example.com",
            "to_address": "support@casemail.test",
            "subject": "Re: Approve EXP-1001",
            "body": "APPROVE\nLooks fine",
            "csrf_token": csrf_token(client, f"/dev/mailbox/{key}"),
        },
    )
    assert response.status_code == 302
    newest = Sandbox(app.config["CASEMAIL_DEV_MAILDIR"]).entries()[0]
    assert newest.subject == "Re: Approve EXP-1001"
    reply = Sandbox(app.config["CASEMAIL_DEV_MAILDIR"]).get(newest.key)
    assert reply.message["In-Reply-To"] == "<Approve-EXP-1001@client.example>"
    assert reply.text.startswith("APPROVE")
    with app.app_context():
        assert db.session.scalar(select(InboundMessage.subject)) == "Re: Approve EXP-1001"


def test_header_injection_in_the_subject_is_refused(app, client, login_as, sandbox_server):
    login_as("admin")
    response = client.post(
        "/dev/mailbox/send",
        data={
            "from_address": "a@example.com",
            "to_address": "b@example.com",
            "subject": "Hi\r\nBcc: victim@example.com",
            "body": "x",
            "csrf_token": csrf_token(client, "/dev/mailbox"),
        },
    )
    assert response.status_code == 400
    assert "Must be a single line." in response.get_data(as_text=True)
    assert Sandbox(app.config["CASEMAIL_DEV_MAILDIR"]).count() == 0


def test_sending_while_the_sandbox_is_down_says_how_to_start_it(app, client, login_as):
    login_as("admin")
    app.config["CASEMAIL_DEV_SMTP_PORT"] = free_port()
    response = client.post(
        "/dev/mailbox/send",
        data={
            "from_address": "a@example.com",
            "to_address": "b@example.com",
            "subject": "Hi",
            "body": "x",
            "csrf_token": csrf_token(client, "/dev/mailbox"),
        },
    )
    assert response.status_code == 400
    assert "Start it with `flask devmail`" in response.get_data(as_text=True)


def test_raw_download_is_the_original_message(app, client, login_as, sandbox_server):
    login_as("admin")
    _send(app, "a@example.com", "b@example.com", "Raw one")
    key = Sandbox(app.config["CASEMAIL_DEV_MAILDIR"]).entries()[0].key
    response = client.get(f"/dev/mailbox/{key}/raw")
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert (
        response.data.startswith(b"From: a@example.com") or b"\nSubject: Raw one" in response.data
    )
    assert b"X-Sandbox-Envelope" not in response.data


def test_unknown_or_malformed_keys_are_404(client, login_as, sandbox_server):
    login_as("admin")
    assert client.get("/dev/mailbox/does-not-exist").status_code == 404
    assert client.get("/dev/mailbox/..%2F..%2Fetc").status_code == 404


def test_reply_to_an_approval_request_answers_as_the_approver(
    app, client, login_as, sandbox_server
):
    login_as("admin")
    request = EmailMessage()
    request["From"] = "Casemail <support@casemail.test>"
    request["To"] = "Manager <manager@example.com>"
    request["Reply-To"] = "support+tok3n@casemail.test"
    request["Subject"] = "[EXP-1001] Approve EXP-1001: 120.50 for Travel"
    request["Message-ID"] = "<request-1@casemail.test>"
    request["References"] = "<first@client.example>"
    request["X-Casemail-Token"] = "tok3n"
    request.set_content("Reply with APPROVE or REJECT on the first line.")
    with smtplib.SMTP("127.0.0.1", app.config["CASEMAIL_DEV_SMTP_PORT"]) as smtp:
        smtp.send_message(request, to_addrs=["manager@example.com"])
    sandbox = Sandbox(app.config["CASEMAIL_DEV_MAILDIR"])
    key = sandbox.entries()[0].key
    page = client.get(f"/dev/mailbox/{key}").get_data(as_text=True)
    assert "approval-hint" in page
    filled = form_data(page)
    assert filled["from_address"] == "manager@example.com"  # the approver
    assert filled["to_address"] == "support+tok3n@casemail.test"  # carries the reply token
    assert filled["body"].strip().startswith("APPROVE\n\nCasemail <support@casemail.test> wrote:")
    assert "> Reply with APPROVE or REJECT on the first line." in filled["body"]
    response = client.post(
        f"/dev/mailbox/{key}/reply",
        data={
            "from_address": "manager@example.com",
            "to_address": "support+tok3n@casemail.test",
            "subject": "Re: [EXP-1001] Approve EXP-1001: 120.50 for Travel",
            "body": "APPROVE\n\n> Reply with APPROVE",
            "csrf_token": csrf_token(client, f"/dev/mailbox/{key}"),
        },
    )
    assert response.status_code == 302
    reply = sandbox.get(sandbox.entries()[0].key)
    assert reply.entry.recipients == ["support+tok3n@casemail.test"]
    assert reply.message["From"] == "manager@example.com"
    assert reply.message["In-Reply-To"] == "<request-1@casemail.test>"
    assert reply.message["References"].split() == [
        "<first@client.example>",
        "<request-1@casemail.test>",
    ]
