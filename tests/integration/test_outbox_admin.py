"""Rate limits, the admin outbox page (roles, CSRF, Send again, Cancel), System status and the
`flask outbox` commands."""

from __future__ import annotations

from datetime import timedelta
from html import escape

from rq import Queue

from tests.fixtures.app import AuthActions, both_databases, csrf_token
from tests.integration import test_outbox as base
from tests.integration.test_outbox import queue, row, send, set_row
from webapp.extensions import get_redis
from webapp.models import OutboundKind
from webapp.models.types import utcnow
from workers import outbound as outbound_worker
from workers.outbound import send_outbound
from workers.queues import OUTBOUND
from workers.worker import run_worker

# The scripted SMTP server and its account, shared with the sending tests.
smtp_account = base.smtp_account


def _flush_queue(app) -> None:
    Queue(OUTBOUND, connection=get_redis(app)).empty()


@both_databases
def test_rate_limit_per_recipient_holds_automatic_mail_only(app, smtp_account):
    server, account_id = smtp_account
    app.config["CASEMAIL_RATE_LIMIT_PER_RECIPIENT"] = 2
    automatic = [queue(app, account_id, subject=f"Loop {n}") for n in range(3)]
    composed = queue(app, account_id, kind=OutboundKind.COMPOSED, automatic=False)

    results = send(app, [*automatic, composed])

    assert {r.outbound_id: r.status for r in results} == {
        automatic[0]: "sent",
        automatic[1]: "sent",
        automatic[2]: "held",
        composed: "sent",
    }
    held = row(app, automatic[2])
    assert held.last_error.startswith(
        "Held: paula@example.org was sent 2 messages in the last hour, the limit per recipient"
    )
    assert held.attempts == 0
    assert len(server.wait_for(3)) == 3


def test_messages_a_job_takes_from_waiting_jobs_count_against_the_limits(
    app, smtp_account, monkeypatch
):
    server, account_id = smtp_account
    app.config["CASEMAIL_RATE_LIMIT_PER_RECIPIENT"] = 2
    monkeypatch.setattr(outbound_worker, "CHUNK", 2)
    waiting = [queue(app, account_id, subject=f"Waiting {n}") for n in range(3)]
    newest = queue(app, account_id, subject="Newest")

    results = send(app, [newest])  # takes the three waiting ones along

    assert {r.outbound_id: r.status for r in results} == {
        waiting[0]: "sent",
        waiting[1]: "sent",
        waiting[2]: "held",
        newest: "held",
    }
    assert len(server.wait_for(2)) == 2


def test_rate_limit_per_case(app, smtp_account, make_case_type, make_case):
    _, account_id = smtp_account
    app.config["CASEMAIL_RATE_LIMIT_PER_CASE"] = 1
    reference = make_case(make_case_type())
    first = queue(app, account_id, reference, recipients=["a@example.org"])
    send(app, [first])
    second = queue(app, account_id, reference, recipients=["b@example.org"])
    send(app, [second])  # another job: what came before is counted in the database

    assert row(app, first).status == "sent"
    assert row(app, second).status == "held"
    assert f"case {reference} sent 1 message in the last hour" in row(app, second).last_error


@both_databases
def test_held_and_cancelled_messages_do_not_count_against_the_limits(
    app, smtp_account, make_case_type, make_case
):
    server, account_id = smtp_account
    app.config["CASEMAIL_RATE_LIMIT_PER_RECIPIENT"] = 2
    app.config["CASEMAIL_RATE_LIMIT_PER_CASE"] = 2
    reference = make_case(make_case_type())
    # Three messages of the last hour to paula@ from the case, of which only one counts.
    earlier = [queue(app, account_id, reference, subject=f"Earlier {n}") for n in range(3)]
    set_row(app, earlier[0], status="held")
    set_row(app, earlier[1], status="cancelled")
    send(app, [earlier[2]])
    later = [queue(app, account_id, reference, subject=f"Later {n}") for n in range(2)]

    results = send(app, later)

    assert {r.outbound_id: r.status for r in results} == {later[0]: "sent", later[1]: "held"}
    assert "paula@example.org was sent 2 messages in the last hour" in row(app, later[1]).last_error
    assert [m.parsed["Subject"] for m in server.wait_for(2)] == [
        f"[{reference}] Earlier 2",
        f"[{reference}] Later 0",
    ]


def test_admin_sees_a_held_message_and_releases_it(app, client, login_as, smtp_account):
    server, account_id = smtp_account
    app.config["CASEMAIL_RATE_LIMIT_PER_RECIPIENT"] = 1
    first = queue(app, account_id, subject="First")
    held_id = queue(app, account_id, subject="Second")
    send(app, [first, held_id])
    assert row(app, held_id).status == "held"
    _flush_queue(app)
    login_as("admin")

    page = client.get("/admin/outbox/").get_data(as_text=True)
    assert "1 message needs your attention" in page
    assert 'data-count="held">1<' in page
    assert "the limit per recipient" in page
    assert escape(row(app, held_id).message_id) in page
    system = client.get("/admin/system").get_data(as_text=True)
    assert "1 held, 0 uncertain, 0 failed" in system

    token = csrf_token(client, "/admin/outbox/?status=held")
    response = client.post(f"/admin/outbox/{held_id}/send-again", data={"csrf_token": token})
    assert response.status_code == 302
    assert row(app, held_id).status == "pending"
    assert run_worker(app, [OUTBOUND], burst=True) is True

    assert [m.parsed["Subject"] for m in server.wait_for(2)] == ["First", "Second"]
    assert row(app, held_id).status == "sent"
    page = client.get("/admin/outbox/").get_data(as_text=True)
    assert "needs your attention" not in page


def test_cancel_and_refusals_show_a_sentence(app, client, login_as, smtp_account):
    server, account_id = smtp_account
    outbound_id = queue(app, account_id)
    _flush_queue(app)
    login_as("admin")
    token = csrf_token(client, "/admin/outbox/")

    client.post(f"/admin/outbox/{outbound_id}/cancel", data={"csrf_token": token})
    stored = row(app, outbound_id)
    assert stored.status == "cancelled" and stored.token_encrypted is None
    assert send(app, [outbound_id]) == []

    again = client.post(
        f"/admin/outbox/{outbound_id}/send-again",
        data={"csrf_token": token},
        follow_redirects=True,
    ).get_data(as_text=True)
    assert (
        f"Only failed, uncertain or held messages can be sent again; message {outbound_id} is "
        "cancelled." in again
    )
    assert server.messages == []


def test_only_admins_reach_the_outbox_and_posts_need_csrf(
    app, client, login_as, make_user, smtp_account
):
    _, account_id = smtp_account
    outbound_id = queue(app, account_id)
    assert client.get("/admin/outbox/").status_code == 302  # to the sign-in page
    login_as("worker")
    assert client.get("/admin/outbox/").status_code == 403
    token = csrf_token(client, "/account")
    cancel = client.post(f"/admin/outbox/{outbound_id}/cancel", data={"csrf_token": token})
    assert cancel.status_code == 403

    admin_client = app.test_client()
    AuthActions(admin_client).login(make_user("admin").email)
    assert admin_client.get("/admin/outbox/").status_code == 200
    assert admin_client.post(f"/admin/outbox/{outbound_id}/cancel").status_code == 400
    assert row(app, outbound_id).status == "pending"


def test_outbox_appears_in_the_admin_menu(client, login_as):
    login_as("admin")
    page = client.get("/").get_data(as_text=True)
    assert 'href="/admin/outbox/"' in page and "Outgoing mail" in page


def test_cli_sends_what_is_due_and_lists(app, runner, smtp_account):
    server, account_id = smtp_account
    due = queue(app, account_id, subject="Due")
    later = queue(app, account_id, subject="Later")
    _flush_queue(app)
    set_row(app, due, created_at=utcnow() - timedelta(minutes=1))
    set_row(app, later, next_attempt_at=utcnow() + timedelta(minutes=5))

    result = runner.invoke(args=["outbox", "send"])

    assert result.exit_code == 0, result.output
    assert f"{due}: sent" in result.output
    assert "Sent 1 message(s); due at the start: 1." in result.output
    assert [m.parsed["Subject"] for m in server.wait_for(1)] == ["Due"]
    listed = runner.invoke(args=["outbox", "list", "--status", "pending"])
    assert listed.exit_code == 0
    assert "Later" in listed.output and "Due" not in listed.output


def test_send_outbound_runs_without_rq_in_an_app_context(app, smtp_account):
    server, account_id = smtp_account
    ids = [queue(app, account_id) for _ in range(3)]
    with app.app_context():
        results = send_outbound(ids)
    assert [r.status for r in results] == ["sent"] * 3
    assert len(server.wait_for(3)) == 3
