"""The demo's whole approval loop through the mail sandbox, as a newcomer runs it: request by
email, case, approval request on /dev/mailbox, reply APPROVE, the case moves, confirmation."""

from __future__ import annotations

from sqlalchemy import func, select

from tests.fixtures.app import both_databases, csrf_token
from tests.fixtures.cases import form_data
from webapp.extensions import db
from webapp.mail.sandbox import Sandbox, SandboxEntry
from webapp.models import Approval, Case, OutboundMessage
from workers.queues import ALL_QUEUES
from workers.worker import run_worker


def _work(app) -> None:
    """What `make run`'s worker does, until the queues are empty."""
    assert run_worker(app, ALL_QUEUES, burst=True) is True


def _seed_and_send_the_request(app, client, runner, login_as) -> Sandbox:
    """`flask demo seed`, then an admin sends the request the mailbox page's Send form has
    ready, and the worker runs; the sandbox."""
    assert runner.invoke(args=["demo", "seed"]).exit_code == 0
    login_as("admin")
    page = client.get("/dev/mailbox").get_data(as_text=True)
    request = form_data(page[page.index('action="/dev/mailbox/send"') :])
    token = csrf_token(client, "/dev/mailbox")
    assert client.post("/dev/mailbox/send", data={**request, "csrf_token": token}).status_code
    _work(app)
    return Sandbox(app.config["CASEMAIL_DEV_MAILDIR"])


def _newest_to(sandbox: Sandbox, address: str, subject_part: str) -> SandboxEntry:
    found = [e for e in sandbox.entries() if address in e.recipients and subject_part in e.subject]
    assert found, [(e.subject, e.recipients) for e in sandbox.entries()]
    return found[0]


@both_databases
def test_request_approval_by_reply_and_confirmation_through_the_sandbox(
    app, client, runner, login_as, sandbox_server
):
    # 1. The requester's email, as the mailbox page's Send form has it.
    sandbox = _seed_and_send_the_request(app, client, runner, login_as)
    _newest_to(sandbox, "requester@example.com", "We have your request")

    # 2. Nobody touches the case: the demo rule submits a complete request for approval.
    with app.app_context():
        case = db.session.scalar(select(Case))
        assert case is not None and case.stage == "manager_approval"
        assert [e.action for e in case.events][:3] == ["Created", "Email in", "Submit"]

    # 3. The approval request reached the manager's inbox in the sandbox.
    entry = _newest_to(sandbox, "manager@example.com", "EXP-1001")
    page = client.get(f"/dev/mailbox/{entry.key}").get_data(as_text=True)
    assert "approval-hint" in page
    reply = form_data(page[page.index("/reply") :])
    assert reply["from_address"] == "manager@example.com"
    assert reply["to_address"].startswith("support+")
    assert reply["body"].strip().startswith("APPROVE")

    # 4. The manager replies APPROVE from the reply form, unchanged.
    token = csrf_token(client, f"/dev/mailbox/{entry.key}")
    response = client.post(f"/dev/mailbox/{entry.key}/reply", data={**reply, "csrf_token": token})
    assert response.status_code == 302
    _work(app)

    # 5. The case moved on, the approval says how it was decided, a confirmation went out.
    with app.app_context():
        case = db.session.scalar(select(Case))
        approval = db.session.scalar(select(Approval))
        sent = [
            (m.kind, m.status, m.last_error)
            for m in db.session.scalars(select(OutboundMessage).order_by(OutboundMessage.id))
        ]
        assert case.stage == "payment", (sent, [e.comment for e in case.events])
        assert (approval.status, approval.decided_via) == ("approved", "email")
        assert all(status == "sent" for _, status, _ in sent), sent
    _newest_to(sandbox, "manager@example.com", "Re:")
    html = client.get("/cases/EXP-1001").get_data(as_text=True)
    approvals = html[html.index('id="approvals"') : html.index('id="timeline"')]
    assert "manager@example.com" in approvals and "via email" in approvals


def test_a_reply_to_mail_sent_from_the_case_page_joins_the_case(
    app, client, runner, login_as, sandbox_server
):
    sandbox = _seed_and_send_the_request(app, client, runner, login_as)

    response = client.post(
        "/cases/EXP-1001/email",
        data={
            "to": "requester@example.com",
            "subject": "Receipt for {{ amount }}?",
            "body": "Please send the receipt for {{ amount }}.",
            "csrf_token": csrf_token(client, "/cases/EXP-1001/email"),
        },
    )
    assert response.status_code == 302
    _work(app)
    entry = _newest_to(sandbox, "requester@example.com", "Receipt for 120.50?")
    assert entry.subject == "[EXP-1001] Receipt for 120.50?"

    # The requester answers under a subject without the case id: only the threading
    # headers (In-Reply-To: our Message-ID) tie the reply to the case.
    page = client.get(f"/dev/mailbox/{entry.key}").get_data(as_text=True)
    reply = form_data(page[page.index("/reply") :])
    assert reply["from_address"] == "requester@example.com"
    assert reply["to_address"] == "support@casemail.test"
    reply.update(subject="The receipt", body="Attached in the post.\n\n" + reply["body"])
    token = csrf_token(client, f"/dev/mailbox/{entry.key}")
    assert (
        client.post(f"/dev/mailbox/{entry.key}/reply", data={**reply, "csrf_token": token})
    ).status_code == 302
    _work(app)

    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Case)) == 1
        case = db.session.scalar(select(Case))
        last = case.events[-1]
        assert (last.kind, last.action, last.actor) == (
            "email",
            "Email in",
            "requester@example.com",
        )
        assert "Attached in the post." in last.comment
