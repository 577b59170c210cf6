"""Ingesting stored messages: one case per message, whatever is retried or raced."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.fixtures.app import both_databases
from tests.support.inbound import load, make_route, message, store
from webapp.extensions import db, get_queue
from webapp.mail.outbound import header_text
from webapp.models import (
    Case,
    CaseAttachment,
    CaseEvent,
    EmailListener,
    InboundMessage,
    OutboundMessage,
)
from webapp.models.types import utcnow
from webapp.services import cases as case_service
from webapp.services.ingest import IngestError, ingest_message, replay, stuck_message_ids
from workers.inbound import enqueue_ingest, requeue_stuck
from workers.queues import INBOUND
from workers.worker import run_worker

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "inbound"


@pytest.fixture
def route(app, make_account, make_case_type):
    """Factory: route(**rule) -> listener id of a listener whose rule opens expense cases."""
    account_id = make_account()
    type_id = make_case_type()
    return lambda **rule: make_route(app, account_id, type_id, **rule)


def ingest(app, inbound_id: int) -> InboundMessage:
    with app.app_context():
        ingest_message(inbound_id)
        db.session.commit()
    return load(app, inbound_id)


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def timeline(app, reference: str) -> list[tuple[str, str]]:
    with app.app_context():
        case = case_service.find_case(reference)
        return [(e.action, e.comment) for e in sorted(case.events, key=lambda e: e.id)]


@both_databases
def test_a_message_opens_one_case_with_its_mapped_fields(app, route):
    listener_id = route()
    inbound_id = store(app, message(), listener_id)

    inbound = ingest(app, inbound_id)

    assert inbound.status == "processed"
    assert inbound.correlation == "no match"
    with app.app_context():
        case = db.session.get(Case, inbound.case_id)
        assert case.reference == "EXP-1001"
        assert case.subject == "Taxi to the airport"
        assert case.requester == "alice@example.com"
        assert case.fields["amount"] == "42.50"
        assert case.fields["category"] == "Travel"
        events = [(e.action, e.channel) for e in sorted(case.events, key=lambda e: e.id)]
    assert events == [("Created", "email"), ("Email in", "email")]
    assert inbound.status_reason == "Opened EXP-1001."


@both_databases
def test_ingesting_twice_makes_one_case_and_one_timeline_entry(app, route):
    inbound_id = store(app, message(), route())
    ingest(app, inbound_id)
    again = ingest(app, inbound_id)
    assert again.status == "processed"
    assert again.attempts == 1
    assert count(app, Case) == 1
    assert count(app, CaseEvent) == 2


@both_databases
def test_two_workers_ingesting_the_same_message_at_once_make_one_case(app, route):
    listener_id = route()
    ids = [store(app, message(message_id=f"<race{i}@example.com>"), listener_id) for i in range(5)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def work() -> None:
        barrier.wait()
        try:
            with app.app_context():
                for inbound_id in ids:
                    ingest_message(inbound_id)
                    db.session.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert count(app, Case) == 5
    assert count(app, CaseEvent) == 10
    assert {load(app, i).attempts for i in ids} == {1}


@both_databases
def test_an_auto_reply_is_ignored_without_a_case_or_an_answer(app, route):
    raw = message(subject="Out of office", headers="Auto-Submitted: auto-replied\r\n")
    inbound = ingest(app, store(app, raw, route(send_ack=True, ack_subject="Got it")))
    assert inbound.status == "ignored"
    assert "Auto-Submitted: auto-replied" in inbound.status_reason
    assert count(app, Case) == 0
    assert count(app, OutboundMessage) == 0


@both_databases
def test_a_bounce_is_ignored_and_linked_to_the_case_of_the_bounced_message(app, route):
    listener_id = route()
    first = ingest(app, store(app, message(message_id="<ours@casemail.test>"), listener_id))
    bounce = (GOLDEN / "bounce_dsn_postfix.eml").read_bytes()
    with app.app_context():
        from webapp.mail.filters import screen

        original = screen(bounce).outcome.original_message_id
    raw = bounce.replace(original.encode(), b"<ours@casemail.test>")

    inbound = ingest(app, store(app, raw, listener_id))

    assert inbound.status == "ignored"
    assert inbound.status_reason.startswith("A bounce, no case and no answer")
    assert inbound.case_id == first.case_id
    assert "bounce of <ours@casemail.test>, a message of EXP-1001" in inbound.correlation
    assert count(app, Case) == 1


@both_databases
def test_a_broken_message_is_quarantined_and_can_be_replayed(app, route, runner):
    listener_id = route()
    raw = (GOLDEN / "broken" / "too_many_parts.eml").read_bytes()
    inbound = ingest(app, store(app, raw, listener_id))
    assert inbound.status == "quarantined"
    assert inbound.status_reason == "The message has more than 500 MIME parts."
    assert inbound.raw == raw

    # Still broken: replay quarantines it again, saying why, and exits non-zero.
    result = runner.invoke(args=["mail", "replay", str(inbound.id)])
    assert result.exit_code == 1
    assert "quarantined. The message has more than 500 MIME parts." in result.output
    assert load(app, inbound.id).attempts == 2

    # An admin fixes the cause (here: the rule that was missing) and replays.
    good = store(app, message(), None)
    assert ingest(app, good).status == "quarantined"
    assert load(app, good).status_reason.startswith("This message has no listener (it came in")
    with app.app_context():
        db.session.get(InboundMessage, good).listener_id = listener_id
        db.session.commit()
    result = runner.invoke(args=["mail", "replay", str(good)])
    assert result.exit_code == 0, result.output
    assert f"#{good}: processed. Opened EXP-1001." in result.output
    with app.app_context(), pytest.raises(IngestError, match="only quarantined messages"):
        replay(good)


def quarantined(app, listener_id: int) -> int:
    """A message stored for the listener, and quarantined (as a failed ingest leaves it)."""
    inbound_id = store(app, message(), listener_id)
    with app.app_context():
        db.session.get(InboundMessage, inbound_id).status = "quarantined"
        db.session.commit()
    return inbound_id


@both_databases
def test_two_replays_of_one_message_at_the_same_moment_open_one_case(app, route, monkeypatch):
    from webapp.services import ingest as ingest_service

    inbound_id = quarantined(app, route())
    real_proofs = ingest_service.sender_proofs
    other: list[str] = []

    def replayed_meanwhile(replies):
        # While this replay waits on the sender's proof, another one runs to its end.
        monkeypatch.setattr(ingest_service, "sender_proofs", real_proofs)

        def replay_too() -> None:
            with app.app_context():
                other.append(replay(inbound_id).status)
                db.session.commit()

        thread = threading.Thread(target=replay_too)
        thread.start()
        thread.join(timeout=30)
        return real_proofs(replies)

    monkeypatch.setattr(ingest_service, "sender_proofs", replayed_meanwhile)
    with app.app_context(), pytest.raises(IngestError) as refused:
        replay(inbound_id)
    assert str(refused.value) == (
        f"Message #{inbound_id} is processed; only quarantined messages are replayed."
    )
    assert other == ["processed"]
    assert count(app, Case) == 1
    assert load(app, inbound_id).case_id is not None


@both_databases
def test_a_replay_started_while_another_ingests_the_message_waits_and_is_refused(
    app, route, monkeypatch
):
    from webapp.services import ingest as ingest_service

    inbound_id = quarantined(app, route())
    real_ingest = ingest_service.ingest_message
    inside, go = threading.Event(), threading.Event()

    def paused(*args, **kwargs):
        inside.set()
        go.wait(10)  # the first replay holds the message here, not committed yet
        return real_ingest(*args, **kwargs)

    monkeypatch.setattr(ingest_service, "ingest_message", paused)
    outcomes: list[str] = []

    def replay_in_thread() -> None:
        with app.app_context():
            try:
                outcomes.append(replay(inbound_id).status)
                db.session.commit()
            except IngestError as exc:
                db.session.rollback()
                outcomes.append(str(exc))

    first = threading.Thread(target=replay_in_thread)
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=replay_in_thread)
    second.start()
    time.sleep(0.5)  # the second replay now waits for the first one's hold on the message
    go.set()
    first.join(30)
    second.join(30)
    assert outcomes == [
        "processed",
        f"Message #{inbound_id} is processed; only quarantined messages are replayed.",
    ]
    assert count(app, Case) == 1


@both_databases
def test_replaying_a_message_whose_case_cannot_be_opened_quarantines_it_again(
    app, route, runner, monkeypatch
):
    listener_id = route()
    # Internal mail from a host name without a dot: no case can name it as requester.
    inbound = ingest(app, store(app, message(sender="ops@intranet"), listener_id))
    reason = "The sender's address ops@intranet is not a full email address"
    assert inbound.status == "quarantined"
    assert inbound.status_reason.startswith(reason)
    result = runner.invoke(args=["mail", "replay", str(inbound.id)])
    assert result.exit_code == 1, result.output
    assert f"#{inbound.id}: quarantined. {reason}" in result.output

    # Opening the case itself is refused (its case type lost its counter, say): the replay
    # rolls back only what ingesting wrote, and the message is quarantined with that reason.
    refused = "This case type has no case counter; re-create it."

    def refuse(*args, **kwargs):
        raise case_service.CaseError(refused)

    monkeypatch.setattr(case_service, "open_case", refuse)
    other = ingest(app, store(app, message(message_id="<m9@example.com>"), listener_id))
    assert (other.status, other.status_reason) == ("quarantined", refused)
    result = runner.invoke(args=["mail", "replay", str(other.id)])
    assert result.exit_code == 1, result.output
    assert f"#{other.id}: quarantined. {refused}" in result.output
    again = load(app, other.id)
    assert (again.status, again.status_reason, again.attempts) == ("quarantined", refused, 2)

    # Something unexpected fails: the same, with the reason every unexpected failure gets.
    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(case_service, "open_case", explode)
    result = runner.invoke(args=["mail", "replay", str(other.id)])
    assert result.exit_code == 1, result.output
    assert f"#{other.id}: quarantined. Ingesting failed unexpectedly (RuntimeError)" in (
        result.output
    )
    assert load(app, other.id).attempts == 3
    monkeypatch.undo()
    result = runner.invoke(args=["mail", "replay", str(other.id)])
    assert result.exit_code == 0, result.output
    assert f"#{other.id}: processed. Opened EXP-1001." in result.output


@both_databases
def test_a_flood_of_references_neither_blocks_a_batch_nor_grows_the_answer(app, route):
    listener_id = route()
    ingest(app, store(app, message(), listener_id))  # EXP-1001, Message-ID <m1@example.com>
    # A reply whose References names the thread's first message among 100,000 made-up ids.
    flood = "".join(f" <x{n}@flood.example>" for n in range(100_000))
    reply = message(
        subject="Re: Taxi to the airport",
        body="See the thread.\n",
        message_id="<r1@example.com>",
        headers=f"References: <m1@example.com>{flood}\r\n",
    )
    ids = [
        store(app, reply, listener_id),
        store(app, message(message_id="<m2@example.com>", subject="Hotel"), listener_id),
    ]
    with app.app_context():
        enqueue_ingest(ids)
    assert run_worker(app, [INBOUND], burst=True) is True
    first, second = (load(app, i) for i in ids)
    assert first.status == "processed"
    assert first.status_reason == "Joins EXP-1001 (matched by References)."
    assert (second.status, second.status_reason) == ("processed", "Opened EXP-1002.")


@both_databases
def test_replies_whose_references_add_up_to_many_hundred_ids_all_find_their_case(app, route):
    """A batch reads the cases its replies answer in pieces of 500 ids; the thread's id sorts
    after 12 x 49 others, so it is found only in the second piece."""
    listener_id = route()
    ingest(app, store(app, message(), listener_id))  # EXP-1001, Message-ID <m1@example.com>
    replies = []
    for n in range(12):
        others = "".join(f" <a{n}-{k}@flood.example>" for k in range(60))
        raw = message(
            subject="Re: Taxi to the airport",
            body="See the thread.\n",
            message_id=f"<r{n}@example.com>",
            headers=f"References: <m1@example.com>{others}\r\n",
        )
        replies.append(store(app, raw, listener_id))
    with app.app_context():
        enqueue_ingest(replies)
    assert run_worker(app, [INBOUND], burst=True) is True
    for inbound_id in replies:
        inbound = load(app, inbound_id)
        assert (inbound.status, inbound.status_reason) == (
            "processed",
            "Joins EXP-1001 (matched by References).",
        )
    assert count(app, Case) == 1


@both_databases
def test_a_sender_no_mail_can_reach_is_quarantined_and_never_answered(app, route):
    listener_id = route()
    with app.app_context():
        db.session.get(EmailListener, listener_id).send_error_email = True
        db.session.commit()
    sender = "a" * 400 + "@example.com"
    inbound = ingest(app, store(app, message(sender=sender), listener_id))
    assert inbound.from_address == ""
    assert inbound.raw.startswith(f"From: Alice <{sender}>".encode())
    assert (inbound.status, inbound.status_reason) == (
        "quarantined",
        "The sender's address is longer than 320 characters, so no case can name it as requester.",
    )
    local = ingest(app, store(app, message(sender="ops@intranet", message_id="<o@x>"), listener_id))
    assert local.status == "quarantined"
    # The error email goes to neither: one is too long to store, neither can be delivered.
    assert count(app, OutboundMessage) == 0


@both_databases
def test_thousands_of_reply_tokens_or_case_ids_cost_a_message_a_few_lookups(app, route):
    from webapp.mail.correlate import TOKEN_LENGTH

    listener_id = route()
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    tokens = [
        "".join(alphabet[(n >> (5 * k)) % 32] for k in range(TOKEN_LENGTH)) for n in range(70_000)
    ]
    recipients = ", ".join(f"approvals+{t}@casemail.test" for t in tokens)
    subject = "Expense " + " ".join(f"[EXP-{n}]" for n in range(2000, 52_000))
    ids = [
        store(app, message(headers=f"Cc: {recipients}\r\n"), listener_id),
        store(app, message(subject=subject, message_id="<m2@example.com>"), listener_id),
        store(app, message(subject="Hotel", message_id="<m3@example.com>"), listener_id),
    ]
    with app.app_context():
        enqueue_ingest(ids)
    started = time.monotonic()
    assert run_worker(app, [INBOUND], burst=True) is True
    assert time.monotonic() - started < 30
    assert [load(app, i).status_reason for i in ids] == [
        "Opened EXP-1001.",
        "Opened EXP-1002.",
        "Opened EXP-1003.",
    ]


def test_a_reply_of_ours_repeats_only_the_first_and_latest_references():
    from webapp.mail.parse import MAX_REFERENCES, parse_message

    ids = [f"<t{n}@example.com>" for n in range(500)]
    raw = message(headers=f"References: {' '.join(ids)} <{'x' * 1000}@long.example>\r\n")
    references = parse_message(raw).references
    assert len(references) == MAX_REFERENCES
    assert references[0] == ids[0]
    assert references[1:] == tuple(ids[len(ids) - MAX_REFERENCES + 1 :])


@both_databases
def test_a_mapped_value_that_does_not_convert_quarantines_with_a_sentence(app, route):
    inbound = ingest(app, store(app, message(body="Amount: twelve euros\n"), route()))
    assert inbound.status == "quarantined"
    assert inbound.status_reason == (
        "A mapped field does not fit: Amount: 'twelve euros' does not fit. "
        "Enter an amount such as 120 or 120.50 (no currency sign)."
    )
    assert count(app, Case) == 0


@both_databases
def test_a_reply_joins_the_case_of_the_message_it_answers(app, route):
    listener_id = route()
    ingest(app, store(app, message(), listener_id))
    reply = message(
        subject="Re: Taxi to the airport",
        body="The receipt is attached now.\n",
        message_id="<m2@example.com>",
        headers="In-Reply-To: <m1@example.com>\r\n",
    )
    inbound = ingest(app, store(app, reply, listener_id))
    assert inbound.status == "processed"
    assert inbound.correlation == "matched by In-Reply-To"
    assert inbound.status_reason.startswith("Joins EXP-1001")
    assert count(app, Case) == 1
    assert timeline(app, "EXP-1001")[-1] == (
        "Email in",
        "Subject: Re: Taxi to the airport\n\nThe receipt is attached now.",
    )


@both_databases
def test_a_case_id_in_the_subject_joins_that_case(app, route):
    listener_id = route()
    ingest(app, store(app, message(), listener_id))
    raw = message(subject="About [EXP-1001] again", message_id="<other@example.com>")
    inbound = ingest(app, store(app, raw, listener_id))
    assert inbound.correlation == "matched by the case id in the subject"
    assert count(app, Case) == 1
    assert len(timeline(app, "EXP-1001")) == 3


def _resolve(app, reference: str) -> None:
    with app.app_context():
        case = case_service.find_case(reference)
        case_service.apply_action(case, "withdraw", user=None)
        db.session.commit()
        assert case.status == "resolved"


@both_databases
@pytest.mark.parametrize(
    ("policy", "cases", "status", "outbound"),
    [("new_case", 2, "resolved", 0), ("reopen", 1, "open", 0), ("reply_closed", 1, "resolved", 1)],
)
def test_mail_for_a_resolved_case_follows_the_rule(app, route, policy, cases, status, outbound):
    listener_id = route(resolved_policy=policy)
    ingest(app, store(app, message(), listener_id))
    _resolve(app, "EXP-1001")
    raw = message(subject="Re: [EXP-1001]", message_id="<late@example.com>")
    inbound = ingest(app, store(app, raw, listener_id))
    assert inbound.status == "processed"
    assert count(app, Case) == cases
    assert count(app, OutboundMessage) == outbound
    with app.app_context():
        assert case_service.find_case("EXP-1001").status == status
        if outbound:
            sent = db.session.scalar(select(OutboundMessage))
            assert sent.recipients == ["alice@example.com"]
            assert "the case is closed" in sent.body


@both_databases
def test_attachments_within_the_limits_become_case_files_and_an_ack_is_queued(app, route):
    raw = (GOLDEN / "attachment_pdf_rfc2231.eml").read_bytes()
    listener_id = route(
        mappings=[], send_ack=True, ack_subject="Received: {{ case_id }}", ack_body="Thanks."
    )
    inbound = ingest(app, store(app, raw, listener_id))
    assert inbound.status == "processed", inbound.status_reason
    with app.app_context():
        files = db.session.scalars(select(CaseAttachment)).all()
        assert len(files) >= 1 and all(f.case_id == inbound.case_id for f in files)
        ack = db.session.scalar(select(OutboundMessage))
        assert ack.subject == "Received: [EXP-1001]"
        assert ack.status == "pending"


@both_databases
def test_attachments_the_rule_does_not_keep_are_named_on_the_message_and_the_timeline(app, route):
    from email.message import EmailMessage

    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "alice@example.com", "x@casemail.test", "Files"
    mail["Message-ID"] = "<files@example.com>"
    mail.set_content("Amount: 5\nCategory: Travel\n")
    for name, content in [(f"f{n}.txt", f"file {n}".encode()) for n in range(8)] + [
        ("empty.txt", b"")
    ]:
        mail.add_attachment(content, "application", "octet-stream", filename=name)
    listener_id = route(max_attachments=2)

    inbound = ingest(app, store(app, mail.as_bytes(), listener_id))
    assert inbound.status == "processed", inbound.status_reason
    said = (
        "6 attachments not kept, more than the rule's 2 attachments: f2.txt, f3.txt, f4.txt, "
        "f5.txt, f6.txt and 1 more; 1 attachment not kept, empty: empty.txt."
    )
    assert {"step": "attachments", "note": said} in inbound.decisions
    with app.app_context():
        files = db.session.scalars(select(CaseAttachment.filename).order_by(CaseAttachment.id))
        assert list(files) == ["f0.txt", "f1.txt"]
        event = db.session.scalar(select(CaseEvent).where(CaseEvent.kind == "email"))
        assert event.comment.startswith(f"Subject: Files\n{said}\n\nAmount: 5")


def test_a_control_character_in_the_senders_subject_does_not_spoil_the_acknowledgement(app, route):
    listener_id = route(mappings=[], send_ack=True, ack_subject="Re: {{ subject }}", ack_body="Ok")
    raw = message(subject="=?utf-8?q?Taxi=1B=5B31m_to_the=07_airport?=")
    inbound = ingest(app, store(app, raw, listener_id))
    assert inbound.status == "processed", inbound.status_reason
    with app.app_context():
        ack = db.session.scalar(select(OutboundMessage))
        assert ack.subject == "[EXP-1001] Re: Taxi [31m to the airport"
        header_text("The subject", ack.subject)  # what building the message checks


@both_databases
def test_the_loop_breaker_quarantines_a_sender_opening_too_many_cases(app, route, monkeypatch):
    monkeypatch.setattr("webapp.services.ingest.LOOP_LIMIT", 2)
    listener_id = route()
    ids = [store(app, message(message_id=f"<loop{i}@example.com>"), listener_id) for i in range(3)]
    statuses = [ingest(app, inbound_id).status for inbound_id in ids]
    assert statuses == ["processed", "processed", "quarantined"]
    assert load(app, ids[2]).status_reason == (
        "Loop breaker: alice@example.com already opened 2 cases in the last 60 minutes (limit 2)."
    )
    assert count(app, Case) == 2


def test_an_update_rule_quarantines_a_message_that_matches_no_case(app, route):
    inbound = ingest(app, store(app, message(), route(action="update_case", mappings=[])))
    assert inbound.status == "quarantined"
    assert inbound.status_reason == "No case matched this message, and its rule only updates cases."


ROOT = Path(__file__).resolve().parents[2]


@both_databases
def test_the_mta_intake_with_a_listener_stores_then_a_worker_ingests(app, app_env, route):
    listener_id = route()
    result = subprocess.run(
        [sys.executable, "-m", "flask", "mail", "ingest", "--listener", str(listener_id)],
        input=message(),
        cwd=ROOT,
        env=app_env,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert get_queue(INBOUND, app).count == 1
    assert run_worker(app, [INBOUND], burst=True) is True
    inbound = load(app, 1)
    assert (inbound.status, inbound.listener_id) == ("processed", listener_id)
    assert count(app, Case) == 1


def test_the_intake_refuses_an_unknown_listener_with_exit_65(runner, app):
    result = runner.invoke(args=["mail", "ingest", "--listener", "99"], input=message())
    assert result.exit_code == 65
    assert "there is no listener with the ID 99" in result.output
    assert count(app, InboundMessage) == 0


def test_a_batch_is_one_job_for_one_worker_and_shared_out_among_several(app, redis_client):
    from rq import Worker

    from workers.inbound import job_sizes

    queue = get_queue(INBOUND, app)

    def jobs_for(ids: list[int]) -> list[int]:
        with app.app_context():
            enqueue_ingest(ids)
        jobs = [job.args[0] for job in queue.get_jobs()]
        queue.empty()
        assert [i for job in jobs for i in job] == ids  # every id once, in order
        return [len(job) for job in jobs]

    batch = list(range(1, 101))
    assert jobs_for(batch) == [100]  # nobody listening yet counts as one
    listening = []
    for n in range(2):
        worker = Worker([queue], name=f"ingest-{n}", connection=redis_client)
        worker.register_birth()
        listening.append(worker)
    try:
        assert jobs_for(batch) == [50, 50]
        assert jobs_for(list(range(1, 501))) == [84, 84, 83, 83, 83, 83]
        assert jobs_for(list(range(1, 41))) == [40]  # two jobs of 20 would cost more than one
    finally:
        for worker in listening:
            worker.register_death()
    assert jobs_for(list(range(1, 251))) == [84, 83, 83]
    assert job_sizes(500, 3) == [84, 84, 83, 83, 83, 83]
    assert job_sizes(100, 4) == [25, 25, 25, 25]
    assert job_sizes(0, 2) == []


def test_one_job_ingests_a_batch_and_a_bad_message_does_not_block_the_others(app, route):
    listener_id = route()
    broken = (GOLDEN / "broken" / "too_many_parts.eml").read_bytes()
    ids = [
        store(app, message(message_id="<a@example.com>"), listener_id),
        store(app, broken, listener_id),
        store(app, message(body="Amount: no idea\n", message_id="<b@example.com>"), listener_id),
        store(app, message(message_id="<c@example.com>"), listener_id),
    ]
    with app.app_context():
        enqueue_ingest([*ids, 12345])
    assert run_worker(app, [INBOUND], burst=True) is True
    assert [load(app, i).status for i in ids] == [
        "processed",
        "quarantined",
        "quarantined",
        "processed",
    ]
    with app.app_context():
        listener = db.session.get(EmailListener, listener_id)
        assert (listener.processed_count, listener.quarantined_count) == (2, 2)


def test_the_reconciler_requeues_messages_stuck_in_received(app, route):
    listener_id = route()
    stuck = store(app, message(), listener_id)
    fresh = store(app, message(message_id="<fresh@example.com>"), listener_id)
    with app.app_context():
        db.session.get(InboundMessage, stuck).received_at = utcnow() - timedelta(minutes=30)
        db.session.commit()
        requeue_stuck()
    assert get_queue(INBOUND, app).count == 1
    assert run_worker(app, [INBOUND], burst=True) is True
    assert load(app, stuck).status == "processed"
    assert load(app, fresh).status == "received"  # its own job is still on its way


def test_a_second_copy_of_a_processed_message_is_ignored(app, route):
    listener_id = route()
    first = ingest(app, store(app, message(), listener_id))
    copy = ingest(app, store(app, message(), listener_id))
    assert copy.status == "ignored"
    assert copy.status_reason == (
        f"A copy of message #{first.id} (same Message-ID), which was already processed."
    )
    assert count(app, Case) == 1


EXPENSE_KEYS = [
    {"field": name, "source": "body_key", "value": key}
    for name, key in (
        ("amount", "Amount"),
        ("category", "Category"),
        ("expense_date", "Date"),
        ("manager_email", "Manager"),
    )
]
EXPENSE_BODY = "Amount: 12\nCategory: meals\nDate: 2026-11-20\nManager: Boss@Example.com\n"


def test_the_rules_stage_action_runs_on_the_case_a_message_opens(app, route):
    listener_id = route(mappings=EXPENSE_KEYS, stage_action="submit")
    inbound = ingest(app, store(app, message(body=EXPENSE_BODY), listener_id))
    assert {"step": "note", "note": "Ran the stage action submit."} in inbound.decisions
    with app.app_context():
        case = case_service.find_case("EXP-1001")
        assert case.stage == "manager_approval"
        assert case.fields["manager_email"] == "boss@example.com"
    assert [entry[0] for entry in timeline(app, "EXP-1001")][:3] == [
        "Created",
        "Email in",
        "Submit",
    ]


def test_a_reply_runs_the_rules_stage_action(app, route):
    listener_id = route(mappings=EXPENSE_KEYS)
    ingest(app, store(app, message(body=EXPENSE_BODY), listener_id))
    with app.app_context():
        listener = db.session.get(EmailListener, listener_id)
        # As rules saved before actions were stored by their key hold it: by its name.
        listener.rule.stage_action = "Submit"
        db.session.commit()
    reply = message(
        subject="Re: Taxi", message_id="<r@example.com>", headers="References: <m1@example.com>\r\n"
    )
    inbound = ingest(app, store(app, reply, listener_id))
    assert {"step": "note", "note": "Ran the stage action Submit."} in inbound.decisions
    with app.app_context():
        case = case_service.find_case("EXP-1001")
        assert case.fields["category"] == "Meals"
        assert case.stage == "manager_approval"


def test_a_stage_action_the_stage_refuses_is_noted_and_the_message_still_joins(app, route):
    listener_id = route(stage_action="submit")
    ingest(app, store(app, message(), listener_id))
    reply = message(subject="Re: [EXP-1001]", message_id="<r@example.com>")
    inbound = ingest(app, store(app, reply, listener_id))
    assert inbound.status == "processed"
    notes = [d["note"] for d in inbound.decisions if d["step"] == "note"]
    assert notes and notes[0].startswith("The stage action submit was not run:")
    assert timeline(app, "EXP-1001")[-1][0] == "Email in"


def test_the_listener_can_tell_the_sender_that_a_message_was_not_processed(app, route):
    listener_id = route()
    with app.app_context():
        db.session.get(EmailListener, listener_id).send_error_email = True
        db.session.commit()
    ingest(app, store(app, message(body="Amount: plenty\n"), listener_id))
    with app.app_context():
        sent = db.session.scalar(select(OutboundMessage))
        assert sent.recipients == ["alice@example.com"]
        assert sent.subject == "Not processed: Taxi to the airport"
        assert "Amount" not in sent.body  # the reason stays with the admins


def _processed_or_quarantined(app) -> int:
    with app.app_context():
        return db.session.scalar(
            select(func.count())
            .select_from(InboundMessage)
            .where(InboundMessage.status != "received")
        )


@both_databases
def test_killing_the_worker_mid_batch_loses_and_doubles_nothing(app, app_env, route):
    listener_id = route()
    total = 200
    ids = [
        store(
            app,
            message(
                message_id=f"<kill{i}@example.com>",
                sender=f"sender{i}@example.com",
                body="Amount: unknown\n" if i % 10 == 0 else "Amount: 10\n",
            ),
            listener_id,
        )
        for i in range(total)
    ]
    with app.app_context():
        enqueue_ingest(ids[: total // 2])
        for inbound_id in ids[total // 2 :]:
            enqueue_ingest([inbound_id])  # small jobs too: kills land between and inside jobs
    # The first kill lands inside the big job (its other 80 messages wait for the reconciler);
    # the next ones among the small jobs, all of which one worker alone would finish.
    for threshold in (20, 60, 100):
        worker = subprocess.Popen(
            [sys.executable, "-m", "flask", "worker", "--queue", INBOUND],
            cwd=ROOT,
            env=app_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while _processed_or_quarantined(app) < threshold and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
    # What the reconciler does after its bound, without waiting for it.
    with app.app_context():
        enqueue_ingest(stuck_message_ids(timedelta(0)))
    assert run_worker(app, [INBOUND], burst=True) is True

    with app.app_context():
        rows = db.session.execute(select(InboundMessage.status, InboundMessage.case_id)).all()
        statuses = sorted({status for status, _ in rows})
        case_ids = [case_id for status, case_id in rows if status == "processed"]
        emails_in = db.session.scalar(
            select(func.count()).select_from(CaseEvent).where(CaseEvent.action == "Email in")
        )
    assert statuses == ["processed", "quarantined"]
    assert len(case_ids) == total - total // 10
    assert len(set(case_ids)) == len(case_ids) == count(app, Case) == emails_in
