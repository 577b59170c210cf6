"""One ingest job, one batch, one transaction: what a failure or a race does to the others."""

from __future__ import annotations

import copy
import fcntl
import threading
import time

import psycopg
import pytest
import sqlalchemy.exc
from sqlalchemy import event, func, select, text

from tests.fixtures.app import both_databases
from tests.support.inbound import load, make_route, message, store
from webapp.casetypes.starters import STARTERS
from webapp.extensions import db
from webapp.models import (
    Case,
    CaseAttachment,
    CaseEvent,
    CaseType,
    EmailListener,
    InboundMessage,
    OutboundMessage,
)
from webapp.services import cases as case_service
from webapp.services import ingest as ingest_service
from webapp.services import turns
from workers.inbound import ingest_messages

PDF = (
    "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\n"
    "Content-Type: text/plain\r\n\r\nAmount: 12\r\n--b1\r\n"
    "Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=r.pdf\r\n"
    "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n"
)


@pytest.fixture
def route(app, make_account, make_case_type):
    """Factory: route(**rule) -> listener id of a listener whose rule opens expense cases."""
    account_id = make_account()
    type_id = make_case_type()
    return lambda **rule: make_route(app, account_id, type_id, **rule)


def ingest_batch(app, ids: list[int]) -> None:
    with app.app_context():
        ingest_messages(ids)


def count(app, model, *where) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model).where(*where))


def counters(app, listener_id: int) -> tuple[int, int]:
    with app.app_context():
        listener = db.session.get(EmailListener, listener_id)
        return listener.processed_count, listener.quarantined_count


def emails_in(app) -> int:
    return count(app, CaseEvent, CaseEvent.action == "Email in")


def explode_on(monkeypatch, subject: str) -> None:
    """Make writing the email entry of the message with `subject` fail unexpectedly."""
    real = ingest_service._email_event

    def explode_on_one(case, sender, parsed, **kwargs):
        if parsed.subject == subject:
            raise RuntimeError("disk on fire")
        real(case, sender, parsed, **kwargs)

    monkeypatch.setattr(ingest_service, "_email_event", explode_on_one)


def pause_at(monkeypatch, subject: str) -> tuple[threading.Event, threading.Event]:
    """Make the batch holding the message with `subject` stop as it writes that message's email
    entry (in its pass, before its cases are written): (set once it stops, set to go on)."""
    working, go_on = threading.Event(), threading.Event()
    real = ingest_service._email_event

    def pause(case, sender, parsed, **kwargs):
        if parsed.subject == subject and not go_on.is_set():
            working.set()
            go_on.wait(10)
        real(case, sender, parsed, **kwargs)

    monkeypatch.setattr(ingest_service, "_email_event", pause)
    return working, go_on


def fail_once_on(monkeypatch, subject: str) -> None:
    """Make writing the email entry of the message with `subject` fail the first time only."""
    real = ingest_service._email_event
    failed: list[bool] = []

    def fail_once(case, sender, parsed, **kwargs):
        if parsed.subject == subject and not failed:
            failed.append(True)
            raise RuntimeError("disk on fire, once")
        real(case, sender, parsed, **kwargs)

    monkeypatch.setattr(ingest_service, "_email_event", fail_once)


def open_on_the_web(app, wait: float) -> str | None:
    """Open an expense case as the web page does, in a thread; its reference, or None when it
    was still waiting after `wait` seconds (it is then left to finish)."""
    opened: list[str] = []

    def open_case() -> None:
        with app.app_context():
            case = case_service.open_case(
                db.session.scalars(select(CaseType)).one(),
                {"amount": "1", "category": "Travel"},
                subject="Typed in",
                requester="web@example.com",
                user=None,
                require_fields=False,
            )
            db.session.commit()
            opened.append(case.reference)

    web = threading.Thread(target=open_case)
    web.start()
    web.join(wait)
    return opened[0] if opened else None


@both_databases
def test_a_batch_opens_cases_joins_replies_within_it_and_ignores_a_copy(app, route):
    listener_id = route()
    raws = [
        message(subject="Taxi", message_id="<t1@example.com>"),
        message(subject="Hotel", sender="bob@example.com", message_id="<h1@example.com>"),
        # A reply to the first message of the same batch joins its case.
        message(
            subject="Re: Taxi",
            message_id="<t2@example.com>",
            headers="In-Reply-To: <t1@example.com>\r\n",
        ),
        # The same message again (delivered twice under another identity): a copy.
        message(subject="Hotel", sender="bob@example.com", message_id="<h1@example.com>"),
        # Attachments of a new case are written with the batch.
        (
            "From: Carol <carol@example.com>\r\nSubject: Receipt\r\n"
            "Message-ID: <r1@example.com>\r\n" + PDF
        ).encode(),
    ]
    ids = [store(app, raw, listener_id) for raw in raws]

    ingest_batch(app, ids)

    taxi, hotel, reply, copy, receipt = (load(app, i) for i in ids)
    assert [m.status for m in (taxi, hotel, reply, copy, receipt)] == [
        "processed",
        "processed",
        "processed",
        "ignored",
        "processed",
    ]
    assert reply.case_id == taxi.case_id
    assert reply.correlation.startswith("matched by In-Reply-To")
    assert copy.status_reason == (
        f"A copy of message #{hotel.id} (same Message-ID), which was already processed."
    )
    assert count(app, Case) == 3
    assert emails_in(app) == 4
    with app.app_context():
        case = db.session.get(Case, receipt.case_id)
        assert [(a.filename, a.size, a.data) for a in case.attachments] == [
            ("r.pdf", 9, b"%PDF-1.4\n")
        ]
        assert [e.action for e in case.events] == ["Created", "Email in"]
        assert db.session.get(Case, taxi.case_id).reference == "EXP-1001"
    assert counters(app, listener_id) == (5, 0)


@both_databases
def test_replies_in_a_later_batch_join_the_cases_of_earlier_mail_and_of_our_answers(app, route):
    listener_id = route(
        send_ack=True, ack_subject="Received: {{ subject }}", ack_body="We have {{ case_id }}."
    )
    first = store(app, message(subject="Taxi", message_id="<t1@example.com>"), listener_id)
    ingest_batch(app, [first])
    with app.app_context():
        ack = db.session.scalars(select(OutboundMessage)).one()
        ack_id = ack.message_id
    raws = [
        # Answers the stored message (In-Reply-To), then our acknowledgement (References only).
        message(
            subject="Re: Taxi",
            message_id="<t2@example.com>",
            headers="In-Reply-To: <t1@example.com>\r\n",
        ),
        message(
            subject="Re: Received: Taxi",
            message_id="<t3@example.com>",
            headers=f"References: <nowhere@example.com> {ack_id}\r\n",
        ),
        # Answers nothing we know: a case of its own.
        message(
            subject="Hotel",
            message_id="<h1@example.com>",
            headers="In-Reply-To: <unknown@example.com>\r\n",
        ),
    ]
    ids = [store(app, raw, listener_id) for raw in raws]

    ingest_batch(app, ids)

    taxi = load(app, first)
    reply, answer, hotel = (load(app, i) for i in ids)
    assert reply.case_id == answer.case_id == taxi.case_id
    assert reply.correlation.startswith("matched by In-Reply-To")
    assert answer.correlation == "matched by References"
    assert hotel.case_id not in (None, taxi.case_id)
    assert count(app, Case) == 2


@both_databases
def test_a_message_that_cannot_open_its_case_is_quarantined_and_the_batch_goes_on(
    app, route, monkeypatch
):
    listener_id = route()
    ids = [
        store(app, message(subject="One", message_id="<1@example.com>"), listener_id),
        store(app, message(subject="Two", message_id="<2@example.com>"), listener_id),
        store(app, message(subject="Three", message_id="<3@example.com>"), listener_id),
        # A local system account: not an address a case could write back to.
        store(
            app,
            message(subject="Four", sender="root@localhost", message_id="<4@example.com>"),
            listener_id,
        ),
    ]
    # Opening the case of "Two" is refused, as a case type whose counter was lost refuses.
    real = case_service.open_case

    def refuse_two(case_type, values, *, subject, **kwargs):
        if subject == "Two":
            raise case_service.CaseError("This case type has no case counter; re-create it.")
        return real(case_type, values, subject=subject, **kwargs)

    monkeypatch.setattr(case_service, "open_case", refuse_two)
    ingest_batch(app, ids)

    one, two, three, four = (load(app, i) for i in ids)
    assert (one.status, three.status) == ("processed", "processed")
    assert (two.status, four.status) == ("quarantined", "quarantined")
    assert two.status_reason == "This case type has no case counter; re-create it."
    assert four.status_reason == (
        "The sender's address root@localhost is not a full email address (such as "
        "name@example.com), so no case can name it as requester."
    )
    assert two.case_id is None and two.attempts == 1
    assert four.case_id is None and four.attempts == 1
    assert count(app, Case) == 2 and emails_in(app) == 2
    with app.app_context():
        assert db.session.get(Case, three.case_id).reference == "EXP-1002"
    assert counters(app, listener_id) == (2, 2)


@both_databases
def test_a_sender_address_no_database_stores_quarantines_that_message_only(app, route):
    """An encoded word in From can decode to NUL (which PostgreSQL refuses) or to bytes that
    are not text (which no driver encodes): the batch once failed whole on every attempt."""
    listener_id = route()
    rest = (
        b"To: expenses@casemail.test\r\nSubject: Hi\r\nMessage-ID: <{n}@example.com>\r\n\r\n"
        b"Amount: 1\r\nCategory: Travel\r\n"
    )
    poisons = [
        b"From: ali\x00ce@example.com\r\n",
        b"From: =?utf-8?q?x?= <=?utf-8?q?a=00?=@example.com>\r\n",
        b"From: =?utf-8?b?////?=\r\n",
        b"From: =?x?q?y?= <=?utf-8?b?/w==?=@example.com>\r\n",
    ]
    good = store(app, message(subject="One", message_id="<1@example.com>"), listener_id)
    bad = [
        store(app, header + rest.replace(b"{n}", str(n).encode()), listener_id)
        for n, header in enumerate(poisons, start=10)
    ]
    named = store(
        app,
        b"From: =?utf-8?b?////?= <dave@example.com>\r\n" + rest.replace(b"{n}", b"20"),
        listener_id,
    )
    ingest_batch(app, [good, *bad, named])

    assert load(app, good).status == "processed"
    for inbound_id in bad:
        inbound = load(app, inbound_id)
        assert (inbound.status, inbound.case_id) == ("quarantined", None)
        assert inbound.status_reason == "The From header names no address mail can be sent to."
    # A name of bytes that are not text: the address is fine, the name is shown as such.
    opened = load(app, named)
    assert opened.status == "processed", opened.status_reason
    with app.app_context():
        assert db.session.get(Case, opened.case_id).requester == "dave@example.com"


@both_databases
def test_an_unexpected_failure_quarantines_that_message_only(app, route, monkeypatch):
    listener_id = route()
    ids = [
        store(app, message(subject=subject, message_id=f"<{n}@example.com>"), listener_id)
        for n, subject in enumerate(["Fine", "Explodes", "Also fine"])
    ]
    explode_on(monkeypatch, "Explodes")

    ingest_batch(app, ids)

    fine, broken, also = (load(app, i) for i in ids)
    assert (fine.status, also.status) == ("processed", "processed")
    assert broken.status == "quarantined"
    assert broken.status_reason.startswith("Ingesting failed unexpectedly (RuntimeError)")
    assert broken.case_id is None
    # Nothing of the failed message stayed: no half-opened case, no counter number used.
    assert count(app, Case) == 2 and emails_in(app) == 2
    with app.app_context():
        assert db.session.get(Case, also.case_id).reference == "EXP-1002"
    assert counters(app, listener_id) == (2, 1)


@both_databases
def test_a_message_whose_case_changed_meanwhile_is_retried_in_the_same_job(app, route, monkeypatch):
    listener_id = route(stage_action="submit")
    opened = store(app, message(subject="Taxi", message_id="<t1@example.com>"), listener_id)
    ingest_batch(app, [opened])
    reply = message(
        subject="Re: [EXP-1001]",
        message_id="<t2@example.com>",
        body="Amount: 12\nCategory: Meals\n",
    )
    ids = [
        store(app, reply, listener_id),
        store(app, message(subject="Hotel", message_id="<h1@example.com>"), listener_id),
    ]
    real = case_service.apply_action
    calls: list[str] = []

    def changed_first_time(case, action, **kwargs):
        # The new case "Hotel" opens runs the stage action too; only the reply's case changes.
        if case.reference == "EXP-1001":
            calls.append(action)
            if len(calls) <= 2:  # the batch's pass and the message's own savepoint
                raise case_service.AlreadyProcessed(f"{case.reference} was already processed.")
        return real(case, action, **kwargs)

    monkeypatch.setattr(case_service, "apply_action", changed_first_time)

    ingest_batch(app, ids)

    joined, other = (load(app, i) for i in ids)
    assert (joined.status, other.status) == ("processed", "processed")
    # Tried again in a new transaction of the same job, after the rest of the batch committed.
    assert joined.attempts == 2 and other.attempts == 1
    assert len(calls) == 3
    with app.app_context():
        case = case_service.find_case("EXP-1001")
        actions = [e.action for e in case.events]
    # One "Email in" for the reply, although it was tried twice.
    assert actions.count("Email in") == 2
    assert count(app, Case) == 2
    assert counters(app, listener_id) == (3, 0)


def test_a_case_that_keeps_changing_leaves_the_message_for_the_reconciler(app, route, monkeypatch):
    listener_id = route(stage_action="submit")
    ingest_batch(app, [store(app, message(message_id="<t1@example.com>"), listener_id)])
    reply_id = store(
        app, message(subject="Re: [EXP-1001]", message_id="<t2@example.com>"), listener_id
    )

    def always_changed(case, action, **kwargs):
        raise case_service.AlreadyProcessed(f"{case.reference} was already processed.")

    monkeypatch.setattr(case_service, "apply_action", always_changed)
    monkeypatch.setattr("workers.inbound.time.sleep", lambda seconds: None)

    ingest_batch(app, [reply_id])

    reply = load(app, reply_id)
    assert reply.status == "received"  # waiting, with nothing of the attempts kept
    assert reply.attempts == 3
    assert emails_in(app) == 1
    assert count(app, CaseAttachment) == 0


@both_databases
def test_case_numbers_stay_consecutive_across_failures_batches_and_other_cases(
    app, route, monkeypatch
):
    listener_id = route()
    subjects = ["One", "Explodes", "Two", "Three"]
    ids = [
        store(app, message(subject=subject, message_id=f"<n{n}@example.com>"), listener_id)
        for n, subject in enumerate(subjects)
    ]
    # A message whose sender cannot be a requester is refused before it takes a number.
    ids.append(
        store(
            app,
            message(subject="Refused", sender="root@localhost", message_id="<r@example.com>"),
            listener_id,
        )
    )
    explode_on(monkeypatch, "Explodes")
    ingest_batch(app, ids)
    monkeypatch.undo()
    later = [
        store(app, message(subject=s, message_id=f"<l{s}@example.com>"), listener_id)
        for s in ("Four", "Five")
    ]
    ingest_batch(app, later)
    by_web_reference = open_on_the_web(app, wait=10)
    with app.app_context():
        references = db.session.scalars(select(Case.reference).order_by(Case.id)).all()
    # Five cases by email (one message failed, one was refused), then one from the web page:
    # numbered one after the other, none skipped, none twice.
    assert references == [f"EXP-{1001 + n}" for n in range(6)]
    assert by_web_reference == "EXP-1006"
    with app.app_context():
        subjects_by_reference = dict(db.session.execute(select(Case.reference, Case.subject)).all())
    assert subjects_by_reference["EXP-1003"] == "Three"


@both_databases
@pytest.mark.parametrize("stage_action", ["", "submit"], ids=["acknowledged", "submitted"])
def test_a_batch_names_its_new_cases_everywhere_once_they_are_numbered(app, route, stage_action):
    """New cases are numbered together just before they are written (or at once when a stage
    action follows): the outcome, the acknowledgement and a reply within the batch all name
    the number each case was given."""
    listener_id = route(
        send_ack=True,
        ack_subject="Received: {{ case_id }}",
        ack_body="We have {{ case_id }}.",
        stage_action=stage_action,
    )
    raws = [
        message(subject="Taxi", message_id="<t1@example.com>"),
        message(subject="Hotel", sender="bob@example.com", message_id="<h1@example.com>"),
        message(
            subject="Re: Taxi",
            message_id="<t2@example.com>",
            headers="In-Reply-To: <t1@example.com>\r\n",
        ),
    ]
    ids = [store(app, raw, listener_id) for raw in raws]

    ingest_batch(app, ids)

    taxi, hotel, reply = (load(app, i) for i in ids)
    assert taxi.status_reason == "Opened EXP-1001."
    assert hotel.status_reason == "Opened EXP-1002."
    assert reply.status_reason.startswith("Joins EXP-1001 (matched by In-Reply-To")
    assert taxi.decisions[-1] == {"step": "outcome", "note": "Opened EXP-1001."}
    with app.app_context():
        assert db.session.get(Case, taxi.case_id).reference == "EXP-1001"
        assert db.session.get(Case, hotel.case_id).reference == "EXP-1002"
        acks = db.session.scalars(
            select(OutboundMessage)
            .where(OutboundMessage.subject.like("Received:%"))
            .order_by(OutboundMessage.id)
        ).all()
        assert [(a.recipients, a.subject, a.body) for a in acks] == [
            (["alice@example.com"], "Received: [EXP-1001]", "We have EXP-1001."),
            (["bob@example.com"], "Received: [EXP-1002]", "We have EXP-1002."),
        ]


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_case_opened_while_a_batch_works_out_its_messages_does_not_wait_for_it(
    app, route, monkeypatch
):
    """The counter row that numbers a case type's cases is locked only while a batch writes
    its cases, not while it parses, routes and builds them: a case of the same type opened on
    the web page meanwhile is written at once, and the numbers stay consecutive."""
    listener_id = route()
    ids = [
        store(app, message(subject=s, message_id=f"<{s}@example.com>"), listener_id)
        for s in ("Taxi", "Hotel")
    ]
    working, go_on = pause_at(monkeypatch, "Hotel")
    batch = threading.Thread(target=ingest_batch, args=(app, ids))
    batch.start()
    try:
        assert working.wait(10)
        assert open_on_the_web(app, wait=5) == "EXP-1001", "the web page waited for the batch"
    finally:
        go_on.set()
        batch.join(10)
    with app.app_context():
        by_subject = dict(db.session.execute(select(Case.subject, Case.reference)).all())
    assert by_subject == {"Typed in": "EXP-1001", "Taxi": "EXP-1002", "Hotel": "EXP-1003"}


@both_databases
def test_cases_whose_first_stage_looks_up_an_assignee_are_written_with_their_numbers(
    app, make_account, make_case_type, make_user
):
    """Looking up the first stage's assignee must not write a case of the batch before it is
    numbered: such a row (no number, no reference) would be unique across all case types, and
    make another worker's batch of any type wait."""
    make_user(email="clerk@example.com")
    draft = copy.deepcopy(STARTERS["expense-approval"].definition)
    draft["stages"][0].update(assignee_kind="user", assignee="clerk@example.com")
    listener_id = make_route(app, make_account(), make_case_type(draft=draft))
    ids = [
        store(app, message(subject=s, message_id=f"<{s}@example.com>"), listener_id)
        for s in ("Taxi", "Hotel", "Train")
    ]
    written: list[str] = []

    def spy(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO CASES"):
            written.extend(row["reference"] for row in context.compiled_parameters)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", spy)
    try:
        ingest_batch(app, ids)
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    assert sorted(written) == ["EXP-1001", "EXP-1002", "EXP-1003"]
    with app.app_context():
        cases = db.session.execute(select(Case.subject, Case.reference, Case.assignee_id)).all()
    assert sorted((subject, reference) for subject, reference, _ in cases) == [
        ("Hotel", "EXP-1002"),
        ("Taxi", "EXP-1001"),
        ("Train", "EXP-1003"),
    ]
    assert all(assignee is not None for _, _, assignee in cases)


@both_databases
def test_two_copies_of_a_message_ingested_by_two_workers_at_once_open_one_case(app, route):
    """A mail server's retry, or one message in two folders: the second worker's copy waits
    for the first one's commit (PostgreSQL: a lock per Message-ID; SQLite: one writer at a
    time), then is ignored as a copy."""
    listener_id = route()
    first = store(app, message(message_id="<twice@example.com>"), listener_id)
    second = store(app, message(message_id="<twice@example.com>"), listener_id)
    claimed, failures = threading.Event(), []

    def worker_a() -> None:
        try:
            with app.app_context(), turns.write_turn() as take_turn:
                ingest_service.ingest_batch([first], before_claim=take_turn)
                claimed.set()
                time.sleep(1.0)  # a slow commit: the other worker gets there meanwhile
                db.session.commit()
        except Exception as exc:
            failures.append(exc)
        finally:
            claimed.set()

    def worker_b() -> None:
        claimed.wait(10)
        try:
            with app.app_context():
                ingest_messages([second])
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker_a), threading.Thread(target=worker_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert failures == []
    assert count(app, Case) == 1
    assert load(app, first).status == "processed"
    copy_of = load(app, second)
    assert (copy_of.status, copy_of.case_id) == ("ignored", None)
    assert copy_of.status_reason == (
        f"A copy of message #{first} (same Message-ID), which was already processed."
    )


@both_databases
def test_a_copy_replayed_while_a_worker_ingests_the_other_opens_one_case(app, route):
    listener_id = route()
    quarantined = store(app, message(message_id="<twice@example.com>"), listener_id)
    received = store(app, message(message_id="<twice@example.com>"), listener_id)
    with app.app_context():
        db.session.get(InboundMessage, quarantined).status = "quarantined"
        db.session.commit()
    claimed = threading.Event()

    def worker() -> None:
        with app.app_context(), turns.write_turn() as take_turn:
            ingest_service.ingest_batch([received], before_claim=take_turn)
            claimed.set()
            time.sleep(1.0)  # a slow commit: the replay gets there meanwhile
            db.session.commit()

    thread = threading.Thread(target=worker)
    thread.start()
    assert claimed.wait(10)
    with app.app_context():
        replayed = ingest_service.replay(quarantined)
        db.session.commit()
        outcome = (replayed.status, replayed.case_id)
    thread.join(30)
    assert count(app, Case) == 1
    assert outcome == ("ignored", None)
    assert load(app, received).status == "processed"


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_two_workers_mixing_replies_and_new_cases_of_one_type_do_not_deadlock(
    app, route, monkeypatch
):
    """A batch whose reply (found by the case id in its subject) updates a case before the
    batch opens one, beside a batch that opens one before it updates the same case: the
    counter row is always locked before any case row, so neither waits for the other in a
    circle (PostgreSQL would end one of them as a deadlock, and the batch would start over)."""
    listener_id = route()
    ingest_batch(
        app, [store(app, message(subject="First", message_id="<f@example.com>"), listener_id)]
    )
    first_batch = [
        store(app, message(subject=s, message_id=f"<{n}@example.com>"), listener_id)
        for n, s in enumerate(("Re: [EXP-1001] one", "Re: [EXP-1001] two", "New from A"))
    ]
    second_batch = [
        store(app, message(subject=s, message_id=f"<b{n}@example.com>"), listener_id)
        for n, s in enumerate(("New from B", "Re: [EXP-1001] three"))
    ]
    failures: list[str] = []
    real_batch = ingest_service.ingest_batch

    def ingest_and_note_failures(*args, **kwargs):
        try:
            return real_batch(*args, **kwargs)
        except sqlalchemy.exc.OperationalError as exc:
            failures.append(str(exc.orig))
            raise

    monkeypatch.setattr(ingest_service, "ingest_batch", ingest_and_note_failures)
    working, go_on = pause_at(monkeypatch, "New from A")
    first = threading.Thread(target=ingest_batch, args=(app, first_batch))
    first.start()
    try:
        assert working.wait(10)
        second = threading.Thread(target=ingest_batch, args=(app, second_batch))
        second.start()
        second.join(0.8)
    finally:
        go_on.set()
        first.join(20)
        second.join(20)
    assert failures == []
    assert [load(app, i).status for i in first_batch + second_batch] == ["processed"] * 5
    with app.app_context():
        references = sorted(db.session.scalars(select(Case.reference)))
    assert references == ["EXP-1001", "EXP-1002", "EXP-1003"]


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_batch_of_replies_leaves_the_counter_row_free(app, route, monkeypatch):
    """Replies found by the case id in their subject open no case: while their batch works,
    a case of the same type opened on the web page is written at once."""
    listener_id = route()
    ingest_batch(
        app, [store(app, message(subject="First", message_id="<f@example.com>"), listener_id)]
    )
    ids = [
        store(
            app,
            message(subject=f"Re: [EXP-1001] {n}", message_id=f"<r{n}@example.com>"),
            listener_id,
        )
        for n in ("one", "two", "three")
    ]
    working, go_on = pause_at(monkeypatch, "Re: [EXP-1001] three")
    batch = threading.Thread(target=ingest_batch, args=(app, ids))
    batch.start()
    try:
        assert working.wait(10)
        assert open_on_the_web(app, wait=5) == "EXP-1002"
    finally:
        go_on.set()
        batch.join(10)
    assert [load(app, i).case_id for i in ids] == [load(app, ids[0]).case_id] * 3
    assert [load(app, i).status_reason.split(" (")[0] for i in ids] == ["Joins EXP-1001"] * 3


class CaseWritesSpy:
    """Every statement of the ingest transactions: whether a case row was written (INSERT or
    UPDATE) while the counter rows were not locked, savepoints rolled back included."""

    def __init__(self) -> None:
        self.locked = False
        self.savepoints: list[tuple[str, bool]] = []
        self.early: list[str] = []

    def statement(self, conn, cursor, statement, parameters, context, executemany) -> None:
        words = statement.split()
        head = " ".join(words[:3]).upper()
        if words[0].upper() == "SAVEPOINT":
            self.savepoints.append((words[1], self.locked))
        elif head.startswith("ROLLBACK TO SAVEPOINT"):
            while self.savepoints:
                name, locked = self.savepoints.pop()
                if name == words[3]:
                    self.locked = locked
                    break
        elif "case_counters" in statement and (
            "FOR UPDATE" in statement or head.startswith("UPDATE CASE_COUNTERS")
        ):
            self.locked = True
        elif head.startswith(("INSERT INTO CASES", "UPDATE CASES")) and not self.locked:
            self.early.append(" ".join(words[:4]))

    def ended(self, conn) -> None:
        self.locked, self.savepoints = False, []


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("failing", ["", "New two", "Re: [EXP-1001] b"])
def test_a_batch_writes_no_case_before_it_holds_the_counter_rows(app, route, monkeypatch, failing):
    """The order that keeps two workers from waiting for each other in a circle: counter rows
    first, then case rows; also when a stage action writes in the middle of the pass, when a
    pass fails and goes again, and one message at a time."""
    listener_id = route(stage_action="submit")
    ingest_batch(
        app, [store(app, message(subject="First", message_id="<f@example.com>"), listener_id)]
    )
    subjects = ["Re: [EXP-1001] a", "New one", "Re: [EXP-1001] b", "New two", "New three"]
    ids = [
        store(app, message(subject=s, message_id=f"<o{n}@example.com>"), listener_id)
        for n, s in enumerate(subjects)
    ]
    if failing:
        fail_once_on(monkeypatch, failing)
    spy = CaseWritesSpy()
    with app.app_context():
        engine = db.engine
    listeners = [
        ("before_cursor_execute", spy.statement),
        ("commit", spy.ended),
        ("rollback", spy.ended),
    ]
    for name, listener in listeners:
        event.listen(engine, name, listener)
    try:
        ingest_batch(app, ids)
    finally:
        for name, listener in listeners:
            event.remove(engine, name, listener)
    assert [load(app, i).status for i in ids] == ["processed"] * 5
    assert spy.early == []


def test_workers_on_sqlite_take_turns_to_write(app, route):
    """A worker whose batch is ready waits while another writes, then writes at once: it
    neither fails on the locked database nor sleeps SQLite's steps of up to 100 ms."""
    listener_id = route()
    ids = [
        store(app, message(subject=s, message_id=f"<{s}@example.com>"), listener_id)
        for s in ("Taxi", "Hotel")
    ]
    with app.app_context():
        turn_file = turns.turn_file()
    assert turn_file == f"{app.config['SQLALCHEMY_DATABASE_URI'][len('sqlite:///') :]}.ingest-turn"
    other_worker = open(turn_file, "a")  # noqa: SIM115 - held across the steps below
    fcntl.flock(other_worker, fcntl.LOCK_EX)
    waiting = threading.Thread(target=ingest_batch, args=(app, ids))
    waiting.start()
    try:
        waiting.join(0.5)
        assert waiting.is_alive()
        assert [load(app, i).status for i in ids] == ["received", "received"]
    finally:
        started = time.monotonic()
        other_worker.close()  # the other worker's turn ends
    waiting.join(10)
    assert not waiting.is_alive()
    assert time.monotonic() - started < 2
    assert [load(app, i).status for i in ids] == ["processed", "processed"]
    assert count(app, Case) == 2


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_workers_on_postgresql_write_at_the_same_time(app):
    with app.app_context():
        assert turns.turn_file() is None
        with turns.write_turn() as take_turn:
            take_turn()  # returns at once: PostgreSQL locks rows, not the database


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_connection_the_server_dropped_is_replaced_within_the_job(app, route, postgres_url):
    """The batch's raw messages are read through the driver's own cursor (binary results): a
    connection PostgreSQL dropped meanwhile still ends as SQLAlchemy's OperationalError, which
    the job answers with a new connection, not a failed job and a wait for the reconciler."""
    listener_id = route()
    ids = [
        store(app, message(subject=s, message_id=f"<{s}@example.com>"), listener_id)
        for s in ("Taxi", "Hotel")
    ]
    with app.app_context():
        backend = db.session.scalar(text("SELECT pg_backend_pid()"))
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        ingest_messages(ids)  # the same session: its first statement meets the dropped link
    assert [load(app, i).status for i in ids] == ["processed", "processed"]
    assert count(app, Case) == 2
