"""Sending the outbox to a real SMTP server (aiosmtpd): what arrives, retries, permanent
failures on the case, crashes left "uncertain", and two senders given the same messages."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import pytest
from rq import Queue
from sqlalchemy import select, update

from tests.fixtures.app import both_databases
from webapp.extensions import db, get_redis
from webapp.mail.correlate import new_reply_token
from webapp.mail.sending import Delivery, Outcome
from webapp.models import (
    CaseEvent,
    CaseType,
    EmailAccount,
    InboundMessage,
    OutboundKind,
    OutboundMessage,
    OutboundStatus,
)
from webapp.models.types import utcnow
from webapp.secretbox import get_secretbox
from webapp.services import cases as case_service
from webapp.services import outbox as outbox_service
from webapp.services.approval_links import APPROVE_MARK
from webapp.services.outbox import BACKOFF, UNCERTAIN_REASON, queue_message
from workers import outbound as outbound_worker
from workers.outbound import CHUNK, dispatch_outbox, send_outbound
from workers.queues import OUTBOUND
from workers.worker import run_worker

DISPLAY_NAME = "Casemail Approvals"


@pytest.fixture
def smtp_account(scripted_smtp, make_account):
    """An account sending to a plain scripted SMTP server; returns (server, account row id)."""
    server = scripted_smtp
    account_id = make_account(
        smtp_host=server.host,
        smtp_port=server.port,
        smtp_email="approvals@example.com",
        smtp_display_name=DISPLAY_NAME,
        smtp_reply_to="replies@example.com",
    )
    return server, account_id


def queue(app, account_id: int | None, case_reference: str | None = None, **kw: Any) -> int:
    """Write one message to the outbox (committed) and return its id."""
    values: dict[str, Any] = {
        "kind": OutboundKind.NOTIFICATION,
        "recipients": ["paula@example.org"],
        "subject": "Your expense",
        "body": "Hello\n",
    }
    values.update(kw)
    with app.app_context():
        account = db.session.get(EmailAccount, account_id) if account_id else None
        case = case_service.find_case(case_reference) if case_reference else None
        row = queue_message(case, account=account, **values)
        db.session.commit()
        return row.id


def send(app, ids: list[int]) -> list[Any]:
    with app.app_context():
        try:
            return send_outbound(ids)
        finally:
            db.session.remove()


def row(app, outbound_id: int) -> OutboundMessage:
    with app.app_context():
        found = db.session.get(OutboundMessage, outbound_id)
        assert found is not None
        db.session.expunge(found)
        return found


def set_row(app, outbound_id: int, **values: Any) -> None:
    with app.app_context():
        db.session.execute(
            update(OutboundMessage).where(OutboundMessage.id == outbound_id).values(**values)
        )
        db.session.commit()


@both_databases
def test_a_message_arrives_with_its_headers_and_the_token_is_erased(app, smtp_account):
    server, account_id = smtp_account
    token = new_reply_token()
    outbound_id = queue(
        app,
        account_id,
        kind=OutboundKind.APPROVAL_REQUEST,
        body=f"Approve: {APPROVE_MARK}\n",
        reply_token=token,
        in_reply_to="<first@example.org>",
        references=["<root@example.org>"],
    )
    assert row(app, outbound_id).token_encrypted

    (result,) = send(app, [outbound_id])

    assert result.status == "sent"
    (captured,) = server.wait_for(1)
    message = captured.parsed
    stored = row(app, outbound_id)
    assert captured.mail_from == "approvals@example.com"
    assert captured.rcpt_tos == ["paula@example.org"]
    assert message["From"].addresses[0].display_name == DISPLAY_NAME
    assert message["Reply-To"].addresses[0].addr_spec == f"replies+{token}@example.com"
    assert message["Message-ID"] == stored.message_id
    assert message["In-Reply-To"] == "<first@example.org>"
    assert message["References"] == "<root@example.org> <first@example.org>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-Casemail-Token"] == token
    assert "/approvals/" in message.get_content() and APPROVE_MARK not in message.get_content()
    assert stored.status == "sent" and stored.sent_at is not None
    assert stored.token_encrypted is None
    assert stored.attempts == 1


def test_commit_enqueues_the_sender_and_a_worker_sends(app, smtp_account):
    server, account_id = smtp_account
    first = queue(app, account_id)
    second = queue(app, account_id, recipients=["ann@example.org"])
    outbound_queue = Queue(OUTBOUND, connection=get_redis(app))
    assert outbound_queue.count == 2  # one job per committing transaction

    assert run_worker(app, [OUTBOUND], burst=True) is True

    assert sorted(m.rcpt_tos[0] for m in server.wait_for(2)) == [
        "ann@example.org",
        "paula@example.org",
    ]
    assert row(app, first).status == row(app, second).status == "sent"


def test_a_rolled_back_message_is_never_enqueued(app, smtp_account):
    _, account_id = smtp_account
    with app.app_context():
        account = db.session.get(EmailAccount, account_id)
        queue_message(
            None,
            account=account,
            kind=OutboundKind.NOTIFICATION,
            recipients=["x@example.org"],
            subject="never",
            body="",
        )
        db.session.flush()
        db.session.rollback()
        db.session.commit()
    assert Queue(OUTBOUND, connection=get_redis(app)).count == 0


def test_redis_down_leaves_the_message_pending_for_the_sweeper(app, smtp_account):
    server, account_id = smtp_account
    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"
    from webapp.extensions import init_redis

    good = get_redis(app)
    init_redis(app)  # a client that cannot connect
    outbound_id = queue(app, account_id)  # the commit does not fail
    assert row(app, outbound_id).status == "pending"
    app.extensions["casemail.redis"] = good

    set_row(app, outbound_id, created_at=utcnow() - timedelta(minutes=1))
    with app.app_context():
        dispatch_outbox()
    assert run_worker(app, [OUTBOUND], burst=True) is True
    server.wait_for(1)
    assert row(app, outbound_id).status == "sent"


def test_many_messages_go_over_one_connection(app, smtp_account):
    server, account_id = smtp_account
    ids = [queue(app, account_id, recipients=[f"p{n}@example.org"]) for n in range(7)]

    results = send(app, ids)

    assert [r.status for r in results] == ["sent"] * 7
    assert len(server.wait_for(7)) == 7
    assert server.connections == 1


@both_databases
def test_a_job_takes_the_due_messages_its_account_has_waiting(app, smtp_account, make_account):
    server, account_id = smtp_account
    other_account = make_account(smtp_host=server.host, smtp_port=server.port)
    own = queue(app, account_id)
    waiting = [queue(app, account_id) for _ in range(2)]
    later = queue(app, account_id)
    set_row(app, later, next_attempt_at=utcnow() + timedelta(minutes=5))
    held = queue(app, account_id)
    set_row(app, held, status="held")
    elsewhere = queue(app, other_account)

    results = send(app, [own])

    assert [(r.outbound_id, r.status) for r in results] == [
        (own, "sent"),
        *[(i, "sent") for i in waiting],
    ]
    assert len(server.wait_for(3)) == 3
    # Their own jobs find them sent; what was not due, held or another account's waits.
    assert send(app, waiting) == []
    assert [row(app, i).status for i in (later, held, elsewhere)] == ["pending", "held", "pending"]


def test_a_job_takes_no_more_than_a_batch(app, smtp_account, monkeypatch):
    _, account_id = smtp_account
    monkeypatch.setattr(outbound_worker, "BATCH", 3)
    ids = [queue(app, account_id) for _ in range(5)]

    results = send(app, ids[:1])

    assert [r.outbound_id for r in results] == ids[:3]
    assert [row(app, i).status for i in ids[3:]] == ["pending", "pending"]


def test_the_next_batch_goes_over_the_kept_connection(app, smtp_account):
    server, account_id = smtp_account

    first = send(app, [queue(app, account_id), queue(app, account_id)])
    second = send(app, [queue(app, account_id)])

    assert [r.status for r in first + second] == ["sent"] * 3
    assert len(server.wait_for(3)) == 3
    assert server.connections == 1


def test_a_kept_connection_the_server_closed_is_replaced_before_sending(app, smtp_account):
    server, account_id = smtp_account
    send(app, [queue(app, account_id)])
    server.drop_connections()  # as a server does with a session idle too long

    ids = [queue(app, account_id), queue(app, account_id)]
    results = send(app, ids)

    # Not one message paid for the dead connection with a retry.
    assert [r.status for r in results] == ["sent", "sent"]
    assert [row(app, i).attempts for i in ids] == [1, 1]
    assert len(server.wait_for(3)) == 3
    assert server.connections == 2


def test_connections_are_not_kept_when_keeping_is_off(app, smtp_account):
    server, account_id = smtp_account
    app.config["CASEMAIL_SMTP_KEEP_SECONDS"] = 0

    send(app, [queue(app, account_id)])
    send(app, [queue(app, account_id)])

    assert len(server.wait_for(2)) == 2
    assert server.connections == 2


def test_a_kept_connection_serves_only_its_account_and_sign_in(app, smtp_server, make_account):
    server = smtp_server(auth={"sender": "pw", "other": "pw2"}, require_auth=True)
    where = {"smtp_host": server.host, "smtp_port": server.port}
    account_id = make_account(smtp_user_id="sender", smtp_password="pw", **where)
    twin = make_account(smtp_user_id="sender", smtp_password="pw", **where)

    def change(password: str, **values: Any) -> None:
        with app.app_context():
            account = db.session.get(EmailAccount, account_id)
            assert account is not None
            for name, value in values.items():
                setattr(account, name, value)
            account.smtp_password_encrypted = get_secretbox().encrypt(password)
            db.session.commit()

    def signs_in() -> int:
        return len(server.auth_mechanisms_used)

    send(app, [queue(app, account_id)])
    send(app, [queue(app, account_id)])
    assert signs_in() == 1
    send(app, [queue(app, twin)])  # same server and sign-in, another account
    assert signs_in() == 2
    change("pw2", smtp_user_id="other")
    send(app, [queue(app, account_id)])
    assert signs_in() == 3
    # A password changed (here to a wrong one) is never bypassed by the connection signed in
    # with the old one.
    change("wrong")
    refused = queue(app, account_id)
    (result,) = send(app, [refused])

    assert result.status == "pending"
    assert result.detail.startswith("Sign-in as other failed: 535")
    assert [m.auth_login for m in server.wait_for(4)] == ["sender", "sender", "sender", "other"]


@pytest.mark.parametrize("security", ["starttls", "smtps"])
def test_tls_and_sign_in(app, smtp_server, make_account, test_ca_truststore, security):
    server = smtp_server(security=security, auth={"sender": "pw"}, require_auth=True)
    account_id = make_account(
        smtp_host=server.host,
        smtp_port=server.port,
        smtp_security=security,
        smtp_truststore_id=test_ca_truststore,
        smtp_user_id="sender",
        smtp_password="pw",
    )
    outbound_id = queue(app, account_id)

    (result,) = send(app, [outbound_id])

    assert result.status == "sent", result.detail
    (captured,) = server.wait_for(1)
    assert captured.tls and captured.auth_login == "sender"


def test_temporary_refusal_is_retried_with_backoff(app, smtp_account):
    server, account_id = smtp_account
    server.answer_next("451 4.3.0 Try again later")
    outbound_id = queue(app, account_id)

    (result,) = send(app, [outbound_id])

    stored = row(app, outbound_id)
    assert result.status == stored.status == "pending"
    assert "451 4.3.0 Try again later" in stored.last_error
    assert stored.next_attempt_at is not None
    wait = stored.next_attempt_at - utcnow()
    assert BACKOFF[0] - timedelta(seconds=5) < wait <= BACKOFF[0]
    # Not due yet: nothing happens.
    assert send(app, [outbound_id]) == []
    set_row(app, outbound_id, next_attempt_at=utcnow() - timedelta(seconds=1))
    with app.app_context():
        dispatch_outbox()
    assert run_worker(app, [OUTBOUND], burst=True) is True
    (captured,) = server.wait_for(1)
    stored = row(app, outbound_id)
    assert stored.status == "sent" and stored.attempts == 2
    assert captured.parsed["Message-ID"] == stored.message_id


def test_out_of_attempts_fails(app, smtp_account):
    server, account_id = smtp_account
    server.answer_next("452 4.2.2 Mailbox full")
    outbound_id = queue(app, account_id)
    set_row(app, outbound_id, attempts=len(BACKOFF))

    send(app, [outbound_id])

    stored = row(app, outbound_id)
    assert stored.status == "failed"
    assert stored.last_error.startswith(f"Gave up after {len(BACKOFF) + 1} attempts.")
    assert "452 4.2.2 Mailbox full" in stored.last_error


@both_databases
def test_permanent_refusal_fails_and_shows_on_the_case(
    app, client, login_as, smtp_account, make_case_type, make_case
):
    server, account_id = smtp_account
    type_id = make_case_type()
    reference = make_case(type_id)
    server.refuse_recipient("paula@example.org", "550 5.1.1 No such user here")
    outbound_id = queue(app, account_id, reference, subject="Decision needed")

    (result,) = send(app, [outbound_id])

    stored = row(app, outbound_id)
    assert result.status == stored.status == "failed"
    assert stored.last_error.startswith(
        "Every recipient was refused: paula@example.org: 550 5.1.1 No such user here"
    )
    with app.app_context():
        events = db.session.scalars(
            select(CaseEvent).where(CaseEvent.action == "Email not delivered")
        ).all()
        assert len(events) == 1
        assert "550 5.1.1 No such user here" in events[0].comment
        assert "Decision needed" in events[0].comment
    login_as("admin")
    page = client.get(f"/cases/{reference}").get_data(as_text=True)
    assert "Email not delivered" in page
    assert "550 5.1.1 No such user here" in page


def test_partial_refusal_is_sent_and_recorded(app, smtp_account):
    server, account_id = smtp_account
    server.refuse_recipient("gone@example.org", "550 5.1.1 Unknown user")
    outbound_id = queue(app, account_id, recipients=["paula@example.org", "gone@example.org"])

    send(app, [outbound_id])

    (captured,) = server.wait_for(1)
    assert captured.rcpt_tos == ["paula@example.org"]
    stored = row(app, outbound_id)
    assert stored.status == "sent"
    assert "gone@example.org: 550 5.1.1 Unknown user" in stored.last_error


def test_unreachable_server_is_temporary(app, make_account):
    account_id = make_account(smtp_host="127.0.0.1", smtp_port=1)
    outbound_id = queue(app, account_id)

    (result,) = send(app, [outbound_id])

    assert result.status == "pending"
    assert row(app, outbound_id).next_attempt_at is not None


def test_no_account_fails_with_a_reason(app):
    outbound_id = queue(app, None)

    (result,) = send(app, [outbound_id])

    assert result.status == "failed"
    assert "no email account to send from" in row(app, outbound_id).last_error


def test_a_message_left_sending_becomes_uncertain_and_is_not_resent(app, smtp_account):
    server, account_id = smtp_account
    outbound_id = queue(app, account_id)
    # A sender claimed it and died before recording the answer.
    set_row(
        app,
        outbound_id,
        status="sending",
        attempts=1,
        sending_at=utcnow() - timedelta(minutes=11),
    )
    assert send(app, [outbound_id]) == []
    with app.app_context():
        dispatch_outbox()
    run_worker(app, [OUTBOUND], burst=True)

    stored = row(app, outbound_id)
    assert stored.status == "uncertain"
    assert stored.last_error == UNCERTAIN_REASON
    assert server.messages == []


def test_a_message_whose_turn_comes_late_is_left_unsent_for_its_next_attempt(
    app, smtp_account, monkeypatch
):
    """The sweeper takes a message "sending" for STUCK_AFTER as lost: a sender must not still
    be about to send it then, even when a slow server held up the messages before it."""
    server, account_id = smtp_account
    ids = [queue(app, account_id, subject=f"Number {n}") for n in range(3)]
    monkeypatch.setattr(outbox_service, "SEND_WITHIN", timedelta(seconds=1))
    answer = server.handle_DATA

    async def slow_first(smtp, session, envelope):
        if not server.captured:
            await asyncio.sleep(2)
        return await answer(smtp, session, envelope)

    monkeypatch.setattr(server, "handle_DATA", slow_first)

    results = send(app, ids)

    assert [r.status for r in results] == ["sent", "pending", "pending"]
    assert [m.parsed["Subject"] for m in server.captured] == ["Number 0"]
    for outbound_id in ids[1:]:
        left = row(app, outbound_id)
        assert left.last_error == outbox_service.NOT_STARTED
        # Not tried, so no attempt counted, and due again at once.
        assert left.attempts == 0
        assert left.next_attempt_at is not None and left.next_attempt_at <= utcnow()
    with app.app_context():
        assert set(outbox_service.due_ids(utcnow())) == set(ids[1:])
    monkeypatch.undo()
    assert [r.status for r in send(app, ids[1:])] == ["sent", "sent"]
    assert [m.parsed["Subject"] for m in server.captured] == [f"Number {n}" for n in range(3)]


@both_databases
def test_a_late_answer_is_recorded_only_on_a_message_as_its_claim_left_it(app, smtp_account):
    """A sender held up past the sweeper's bound answers at last: the message an admin
    cancelled meanwhile stays cancelled; the one still uncertain gets the server's answer."""
    _, account_id = smtp_account
    cancelled, left_alone = (queue(app, account_id, subject=s) for s in ("One", "Two"))
    with app.app_context():
        claimed = outbox_service.claim([cancelled, left_alone], utcnow())
        db.session.commit()
        later = utcnow() + outbox_service.STUCK_AFTER + timedelta(seconds=1)
        assert outbox_service.mark_uncertain(later) == 2
        outbox_service.cancel(cancelled)
        db.session.commit()
        accepted = Delivery(Outcome.SENT, "Accepted.")
        outbox_service.finish(
            [outbox_service.Outgoing(c, None, None, accepted) for c in claimed],
            [outbox_service.Answer(accepted, later) for _ in claimed],
        )
        db.session.commit()

    assert (row(app, cancelled).status, row(app, left_alone).status) == ("cancelled", "sent")


@both_databases
def test_two_senders_given_the_same_messages_send_each_once(app, smtp_account):
    server, account_id = smtp_account
    ids = [queue(app, account_id, recipients=[f"p{n}@example.org"]) for n in range(20)]
    barrier = threading.Barrier(2)
    outcomes: list[list[Any]] = []

    def sender() -> None:
        barrier.wait()
        outcomes.append(send(app, ids))

    threads = [threading.Thread(target=sender) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sum(len(o) for o in outcomes) == 20
    assert len(server.wait_for(20)) == 20
    assert sorted(m.rcpt_tos[0] for m in server.messages) == sorted(
        f"p{n}@example.org" for n in range(20)
    )
    with app.app_context():
        statuses = db.session.scalars(select(OutboundMessage.status)).all()
    assert set(statuses) == {"sent"}


def test_case_mail_threads_into_the_case_conversation(app, smtp_account, make_case_type, make_case):
    server, account_id = smtp_account
    reference = make_case(make_case_type())
    with app.app_context():
        case = case_service.find_case(reference)
        for n in (1, 2):
            db.session.add(
                InboundMessage(
                    raw=b"x",
                    sha256=f"{n:064d}",
                    size=1,
                    source="devmail",
                    message_id=f"<in-{n}@example.org>",
                    case_id=case.id,
                    status="processed",
                )
            )
        db.session.commit()
    outbound_id = queue(app, account_id, reference)

    send(app, [outbound_id])

    message = server.wait_for(1)[0].parsed
    assert message["In-Reply-To"] == "<in-2@example.org>"
    assert message["References"] == "<in-1@example.org> <in-2@example.org>"
    assert message["X-Casemail-Case"] == reference
    assert message["Subject"] == f"[{reference}] Your expense"


def test_a_stage_notification_goes_out_from_the_case_types_account(
    app, smtp_account, make_case_type, make_case, make_user
):
    server, account_id = smtp_account
    type_id = make_case_type()
    with app.app_context():
        db.session.get(CaseType, type_id).email_account_id = account_id
        db.session.commit()
    worker = make_user("worker")
    reference = make_case(type_id, by=worker)
    with app.app_context():
        case = case_service.find_case(reference)
        case_service.apply_action(case, "submit", user=db.session.merge(worker))
        db.session.commit()

    assert run_worker(app, [OUTBOUND], burst=True) is True

    (captured,) = server.wait_for(1)
    assert captured.rcpt_tos == ["manager@example.com"]
    assert captured.parsed["Subject"] == f"Approve [{reference}]: 120.50 for Travel"
    with app.app_context():
        statuses = db.session.scalars(select(OutboundMessage.status)).all()
    assert statuses == [OutboundStatus.SENT.value]


def test_the_sweeper_adds_no_jobs_while_send_jobs_wait(app, smtp_account):
    server, account_id = smtp_account
    outbound_id = queue(app, account_id)  # its job waits: no worker runs
    set_row(app, outbound_id, created_at=utcnow() - timedelta(minutes=1))
    outbound_queue = Queue(OUTBOUND, connection=get_redis(app))
    assert outbound_queue.count == 1

    with app.app_context():
        dispatch_outbox()
        dispatch_outbox()

    assert outbound_queue.count == 1
    assert run_worker(app, [OUTBOUND], burst=True) is True
    assert len(server.wait_for(1)) == 1
    assert row(app, outbound_id).status == "sent"


@both_databases
def test_a_job_of_several_chunks_sends_and_records_each_message_once(app, smtp_account):
    server, account_id = smtp_account
    count = 2 * CHUNK + 7  # two full chunks in the pipeline and a short one
    ids = [queue(app, account_id, recipients=[f"reader{n}@example.org"]) for n in range(count)]

    results = send(app, ids)

    assert sorted(r.outbound_id for r in results) == ids
    assert {r.status for r in results} == {"sent"}
    received = server.wait_for(count)
    assert sorted(m.rcpt_tos[0] for m in received) == sorted(
        f"reader{n}@example.org" for n in range(count)
    )
    with app.app_context():
        statuses = db.session.scalars(
            select(OutboundMessage.status).where(OutboundMessage.id.in_(ids))
        ).all()
    assert statuses == ["sent"] * count
    assert send(app, ids) == []  # nothing is sent twice


def test_a_fault_while_the_next_chunk_is_prepared_leaves_the_chunk_on_the_wire_uncertain(
    app, smtp_account, monkeypatch
):
    server, account_id = smtp_account
    ids = [queue(app, account_id, recipients=[f"r{n}@example.org"]) for n in range(CHUNK + 1)]

    prepared: list[int] = []
    real_prepare = outbox_service.prepare

    def prepare_once(*args: Any, **kwargs: Any) -> Any:
        prepared.append(1)
        if len(prepared) == 2:
            raise RuntimeError("worker killed")
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(outbox_service, "prepare", prepare_once)
    with pytest.raises(RuntimeError):
        send(app, ids)
    monkeypatch.undo()
    # The first chunk was handed to the server; no answer of it was recorded. The second
    # chunk was claimed but never sent. Both stay "sending": none is sent again unnoticed.
    assert len(server.wait_for(CHUNK)) == CHUNK
    assert {row(app, i).status for i in ids} == {"sending"}
    assert send(app, ids) == []
    assert len(server.messages) == CHUNK


def test_a_crash_after_sending_leaves_it_sending_then_uncertain(app, smtp_account, monkeypatch):
    server, account_id = smtp_account
    outbound_id = queue(app, account_id)

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("worker killed")

    # The server took the message; the worker dies before recording its answer.
    monkeypatch.setattr("webapp.services.outbox.finish", crash)
    with pytest.raises(RuntimeError):
        send(app, [outbound_id])
    monkeypatch.undo()
    assert len(server.wait_for(1)) == 1
    assert row(app, outbound_id).status == "sending"

    assert send(app, [outbound_id]) == []  # another job: not sent again
    set_row(app, outbound_id, sending_at=utcnow() - timedelta(minutes=11))
    with app.app_context():
        dispatch_outbox()
    run_worker(app, [OUTBOUND], burst=True)
    assert row(app, outbound_id).status == "uncertain"
    assert len(server.messages) == 1
