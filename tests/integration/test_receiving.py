"""Receiving from the real Dovecot: stored once, committed before the server is changed."""

from __future__ import annotations

import fcntl
import poplib
import sqlite3
import threading
import time
from collections.abc import Callable

import pytest
from imapclient import IMAPClient
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from tests.fixtures.app import both_databases
from tests.fixtures.listeners import make_raw
from webapp.extensions import db
from webapp.models import EmailListener, InboundMessage
from webapp.services import turns
from webapp.services.receiving import PollResult, poll


class Batches:
    """Records what a poll hands on for ingesting, instead of enqueueing it."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, ids: list[int]) -> None:
        self.calls.append(ids)


def run(
    app,
    listener_id: int,
    committed: Callable[[list[int]], None] | None = None,
    until: float | None = None,
) -> PollResult:
    with app.app_context():
        listener = db.session.get(EmailListener, listener_id)
        return poll(listener, committed or Batches(), until=until)


def stored(app) -> list[InboundMessage]:
    with app.app_context():
        rows = db.session.scalars(
            select(InboundMessage)
            .options(selectinload(InboundMessage.stored))  # the bytes, read while attached
            .order_by(InboundMessage.id)
        ).all()
        db.session.expunge_all()
        return list(rows)


def flags_by_subject(imap_client: IMAPClient, folder: str = "INBOX") -> dict[str, tuple]:
    imap_client.select_folder(folder, readonly=True)
    uids = imap_client.search(["ALL"])
    data = imap_client.fetch(uids, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
    return {
        d[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode().split(":", 1)[1].strip(): d[b"FLAGS"]
        for d in data.values()
    }


@both_databases
def test_imap_stores_each_message_once_then_marks_it_read(
    app, dovecot, mailbox_user, mailbox_account, make_listener, imap
):
    raws = [make_raw(f"Order {n}") for n in range(3)]
    for raw in raws:
        dovecot.deliver(mailbox_user.login, raw)
    listener_id = make_listener(mailbox_account())
    batches = Batches()

    result = run(app, listener_id, batches)

    assert result.summary() == "fetched 3, stored 3, duplicates 0"
    rows = stored(app)
    # Mail delivered within one second has no order on the server.
    assert sorted(r.raw for r in rows) == sorted(raws)
    assert {r.source for r in rows} == {"imap"}
    assert [r.uid for r in rows] == [1, 2, 3]
    assert all(r.uidvalidity and r.folder == "INBOX" and r.status == "received" for r in rows)
    assert batches.calls == [[r.id for r in rows]]
    assert all(b"\\Seen" in flags for flags in flags_by_subject(imap).values())

    again = run(app, listener_id)
    assert again.summary() == "fetched 0, stored 0, duplicates 0"
    assert len(stored(app)) == 3


@both_databases
def test_a_polled_message_is_stored_as_the_mail_intake_stores_it(
    app, dovecot, mailbox_user, mailbox_account, make_listener
):
    """The poll writes its batch as plain rows: every column, defaults included, is what the
    intake of a mail server's pipe (`flask mail ingest`) stores for the same message."""
    from webapp.services.intake import store_for_listener

    raw = make_raw("Invoice 7")
    dovecot.deliver(mailbox_user.login, raw)
    listener_id = make_listener(mailbox_account())
    assert run(app, listener_id).stored == 1
    with app.app_context():
        listener = db.session.get(EmailListener, listener_id)
        piped = store_for_listener(raw, "mta", listener).id
        db.session.commit()
    polled, intake = stored(app)
    assert intake.id == piped and polled.raw == intake.raw == raw
    same = [
        "message_id",
        "subject",
        "from_address",
        "sha256",
        "size",
        "status",
        "status_reason",
        "listener_id",
        "account_id",
        "case_id",
        "correlation",
        "decisions",
        "attempts",
        "processed_at",
    ]
    assert {c: getattr(polled, c) for c in same} == {c: getattr(intake, c) for c in same}
    assert polled.subject == "Invoice 7" and polled.from_address == "customer@customer.example"
    assert polled.status == "received" and polled.attempts == 0 and polled.decisions == []
    assert polled.received_at.tzinfo is not None
    assert abs((intake.received_at - polled.received_at).total_seconds()) < 60
    assert (polled.source, polled.folder, polled.uid) == ("imap", "INBOX", 1)


@both_databases
def test_headers_with_raw_8bit_bytes_or_an_encoded_nul_are_stored_and_ingested(
    app, dovecot, mailbox_user, mailbox_account, make_listener, make_case_type
):
    """A Message-ID in UTF-8 (RFC 6532) or Latin-1 bytes, and a NUL written as an encoded
    word, are what any sender can send: they are stored readable, and the mail after them
    too, where the poll used to fail on them at every try."""
    from webapp.models import Case
    from workers.queues import INBOUND
    from workers.worker import run_worker

    odd = [
        "From: Jörg <jorg@customer.example>\r\nSubject: Grüße\r\n"
        "Message-ID: <café@customer.example>\r\n\r\nHallo\r\n".encode(),
        b"From: x@customer.example\r\nSubject: =?utf-8?q?hello=00world?=\r\n"
        b"Message-ID: <nul\xe9@customer.example>\r\nReferences: <a\x00b@x>\r\n\r\nhi\r\n",
    ]
    for raw in [*odd, make_raw("Ordinary order")]:
        dovecot.deliver(mailbox_user.login, raw)
    type_id = make_case_type()
    with app.app_context():
        from webapp.services import rules

        rule = rules.save_rule(None, rules.RuleData("Orders", "create_case", type_id))
        db.session.commit()
        rule_id = rule.id
    listener_id = make_listener(mailbox_account(), rule_id=rule_id)
    result = run(app, listener_id, lambda ids: None)
    assert result.ok, result.errors
    assert result.summary() == "fetched 3, stored 3, duplicates 0"
    rows = {r.subject: r for r in stored(app)}
    assert set(rows) == {"Grüße", "helloworld", "Ordinary order"}
    assert rows["Grüße"].message_id == "<café@customer.example>"
    assert rows["Grüße"].from_address == "jorg@customer.example"
    assert rows["helloworld"].message_id == "<nulé@customer.example>"
    with app.app_context():
        from workers.inbound import enqueue_ingest

        enqueue_ingest([r.id for r in rows.values()])
    assert run_worker(app, [INBOUND], burst=True) is True
    assert {r.status for r in stored(app)} == {"processed"}
    with app.app_context():
        subjects = set(db.session.scalars(select(Case.subject)))
    assert subjects == {"Grüße", "helloworld", "Ordinary order"}


def test_a_poll_on_sqlite_writes_in_its_turn_among_the_ingest_workers(
    app, dovecot, mailbox_user, mailbox_account, make_listener, imap
):
    """While an ingest worker writes, the poll waits for its turn (not SQLite's steps of up to
    100 ms), leaving the server's message unflagged; it stores the moment the turn ends."""
    dovecot.deliver(mailbox_user.login, make_raw("Order 1"))
    listener_id = make_listener(mailbox_account())
    with app.app_context():
        turn_file = turns.turn_file()
    assert turn_file is not None
    worker = open(turn_file, "a")  # noqa: SIM115 - held across the steps below
    fcntl.flock(worker, fcntl.LOCK_EX)
    results: list[PollResult] = []
    polling = threading.Thread(target=lambda: results.append(run(app, listener_id)))
    polling.start()
    try:
        polling.join(1.0)
        assert polling.is_alive()
        assert stored(app) == []
        assert flags_by_subject(imap) == {"Order 1": ()}
        # Nothing written before the turn either: SQLite's write lock is free for the worker.
        path = app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///")
        other = sqlite3.connect(path, timeout=0.2, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        finally:
            other.close()
    finally:
        started = time.monotonic()
        worker.close()  # the worker's turn ends
    polling.join(10)
    assert not polling.is_alive()
    assert time.monotonic() - started < 2
    assert results[0].summary() == "fetched 1, stored 1, duplicates 0"
    assert [m.status for m in stored(app)] == ["received"]


def test_imap_over_tls_with_a_truststore(
    app, dovecot, mailbox_user, mailbox_account, make_listener, test_ca_truststore
):
    dovecot.deliver(mailbox_user.login, make_raw("Secure"))
    account = mailbox_account(
        receiver_security="ssl",
        receiver_port=dovecot.imaps_port,
        receiver_truststore_id=test_ca_truststore,
    )
    result = run(app, make_listener(account))
    assert result.summary() == "fetched 1, stored 1, duplicates 0"


def test_fetches_in_batches_of_the_listener_size(
    app, dovecot, mailbox_user, mailbox_account, make_listener
):
    for n in range(5):
        dovecot.deliver(mailbox_user.login, make_raw(f"Order {n}"))
    batches = Batches()
    run(app, make_listener(mailbox_account(), max_batch=2), batches)
    assert [len(ids) for ids in batches.calls] == [2, 2, 1]


def test_a_backlog_is_handed_on_in_growing_batches_so_ingest_starts_early(
    app, dovecot, mailbox_user, mailbox_account, make_listener
):
    for n in range(45):
        dovecot.deliver(mailbox_user.login, make_raw(f"Order {n}"))
    batches = Batches()
    result = run(app, make_listener(mailbox_account(), max_batch=25), batches)
    assert [len(ids) for ids in batches.calls] == [10, 20, 15]  # 10, then doubling up to 25
    assert result.stored == 45 and len({i for ids in batches.calls for i in ids}) == 45


@both_databases
def test_a_poll_with_a_time_limit_leaves_the_rest_for_the_next(
    app, dovecot, mailbox_user, mailbox_account, make_listener, imap
):
    raws = [make_raw(f"Order {n}") for n in range(5)]
    for raw in raws:
        dovecot.deliver(mailbox_user.login, raw)
    listener_id = make_listener(mailbox_account(), max_batch=2)

    # A limit passed already: the first batch, and no other.
    first = run(app, listener_id, until=time.monotonic())
    assert (first.summary(), first.more) == ("fetched 2, stored 2, duplicates 0", True)
    assert sorted(b"\\Seen" in f for f in flags_by_subject(imap).values()) == [0, 0, 0, 1, 1]

    rest = run(app, listener_id)
    assert (rest.summary(), rest.more) == ("fetched 3, stored 3, duplicates 0", False)
    assert sorted(r.raw for r in stored(app)) == sorted(raws)
    assert all(b"\\Seen" in f for f in flags_by_subject(imap).values())

    # Past the limit, but all of it fits in the first batch: nothing more waits.
    dovecot.deliver(mailbox_user.login, make_raw("Order 5"))
    last = run(app, listener_id, until=time.monotonic())
    assert (last.summary(), last.more) == ("fetched 1, stored 1, duplicates 0", False)


def test_a_poll_with_a_time_limit_fetches_in_batches_that_do_not_grow(
    app, dovecot, mailbox_user, mailbox_account, make_listener
):
    for n in range(25):
        dovecot.deliver(mailbox_user.login, make_raw(f"Order {n}"))
    listener_id, batches = make_listener(mailbox_account(), max_batch=25), Batches()
    result = run(app, listener_id, batches, until=time.monotonic() + 60)
    assert [len(ids) for ids in batches.calls] == [10, 10, 5]  # without a limit: 10, then 15
    assert (result.stored, result.more) == (25, False)


def test_delete_removes_stored_messages_from_the_server(
    app, dovecot, mailbox_user, mailbox_account, make_listener, imap
):
    for n in range(2):
        dovecot.deliver(mailbox_user.login, make_raw(f"Order {n}"))
    result = run(app, make_listener(mailbox_account(), after_processing="delete"))
    assert result.stored == 2
    assert flags_by_subject(imap) == {}


def test_move_puts_stored_messages_in_the_other_folder(
    app, dovecot, mailbox_user, mailbox_account, make_listener, imap
):
    dovecot.create_folder(mailbox_user.login, "Processed")
    dovecot.deliver(mailbox_user.login, make_raw("Order 1"))
    listener_id = make_listener(
        mailbox_account(), after_processing="move", move_to_folder="Processed"
    )
    assert run(app, listener_id).stored == 1
    assert flags_by_subject(imap) == {}
    assert list(flags_by_subject(imap, "Processed")) == ["Order 1"]


def test_uidvalidity_change_imports_nothing_again(
    app, dovecot, mailbox_user, mailbox_account, make_listener, imap
):
    dovecot.create_folder(mailbox_user.login, "Orders")
    for n in range(3):
        dovecot.deliver(mailbox_user.login, make_raw(f"Order {n}"), folder="Orders")
    listener_id = make_listener(mailbox_account(), folder="Orders")
    assert run(app, listener_id).stored == 3
    before = stored(app)[0].uidvalidity

    # Recreating a folder gives it a new UIDVALIDITY: every message gets a new UID.
    imap.rename_folder("Orders", "Old")
    imap.create_folder("Orders")
    imap.select_folder("Old")
    imap.copy(imap.search(["ALL"]), "Orders")
    imap.unselect_folder()
    dovecot.deliver(mailbox_user.login, make_raw("Order new"), folder="Orders")

    result = run(app, listener_id)

    assert result.summary() == "fetched 4, stored 1, duplicates 3"
    rows = stored(app)
    assert len(rows) == 4
    assert rows[-1].subject == "Order new"
    assert rows[-1].uidvalidity != before


def test_oversize_message_is_kept_whole_in_quarantine(
    app, dovecot, mailbox_user, mailbox_account, make_listener
):
    big = make_raw("Large", body="x" * 3000)
    dovecot.deliver(mailbox_user.login, big)
    batches = Batches()
    result = run(app, make_listener(mailbox_account(), max_message_bytes=2048), batches)
    assert result.summary() == "fetched 1, stored 0, duplicates 0, quarantined 1"
    [row] = stored(app)
    assert row.status == "quarantined"
    assert "more than the listener's limit of 2,048" in row.status_reason
    assert row.raw == big
    # Nothing to ingest: the quarantined message waits for an admin, counted on the listener.
    assert batches.calls == []
    with app.app_context():
        listener = db.session.get(EmailListener, row.listener_id)
        assert (listener.quarantined_count, listener.processed_count) == (1, 0)


class Crash(BaseException):
    """The process stopping (as SystemExit or a signal would), not an error the poll handles."""


def crash(_ids: list[int]) -> None:
    raise Crash


@both_databases
def test_a_crash_after_the_commit_leaves_no_duplicate(
    app, dovecot, mailbox_user, mailbox_account, make_listener, imap
):
    for n in range(3):
        dovecot.deliver(mailbox_user.login, make_raw(f"Order {n}"))
    listener_id = make_listener(mailbox_account())

    with pytest.raises(Crash):
        run(app, listener_id, crash)
    assert len(stored(app)) == 3
    assert not any(b"\\Seen" in f for f in flags_by_subject(imap).values())

    result = run(app, listener_id)

    assert result.summary() == "fetched 0, stored 0, duplicates 0"
    assert len(stored(app)) == 3
    # The interrupted poll's marking is finished by the next one.
    assert all(b"\\Seen" in f for f in flags_by_subject(imap).values())


def test_a_crash_before_delete_is_finished_by_the_next_poll(
    app, dovecot, mailbox_user, mailbox_account, make_listener, imap
):
    dovecot.deliver(mailbox_user.login, make_raw("Order 1"))
    listener_id = make_listener(mailbox_account(), after_processing="delete")
    with pytest.raises(Crash):
        run(app, listener_id, crash)
    assert list(flags_by_subject(imap)) == ["Order 1"]
    assert run(app, listener_id).fetched == 0
    assert flags_by_subject(imap) == {}
    assert len(stored(app)) == 1


def pop3_count(dovecot, mailbox_user) -> int:
    client = poplib.POP3(dovecot.host, dovecot.pop3_port)
    try:
        client.user(mailbox_user.login)
        client.pass_(mailbox_user.password)
        return client.stat()[0]
    finally:
        client.quit()


@both_databases
def test_pop3_stores_by_uidl_and_leaves_mail_on_the_server(
    app, dovecot, mailbox_user, mailbox_account, make_listener
):
    raws = [make_raw(f"Order {n}") for n in range(2)]
    for raw in raws:
        dovecot.deliver(mailbox_user.login, raw)
    listener_id = make_listener(mailbox_account("pop3"))

    assert run(app, listener_id).summary() == "fetched 2, stored 2, duplicates 0"
    rows = stored(app)
    assert sorted(r.raw for r in rows) == sorted(raws)
    assert all(r.source == "pop3" and r.uidl for r in rows)
    assert run(app, listener_id).summary() == "fetched 0, stored 0, duplicates 0"
    assert pop3_count(dovecot, mailbox_user) == 2


def test_pop3_delete_after_storing(app, dovecot, mailbox_user, mailbox_account, make_listener):
    for n in range(3):
        dovecot.deliver(mailbox_user.login, make_raw(f"Order {n}"))
    listener_id = make_listener(mailbox_account("pop3"), after_processing="delete", max_batch=2)
    assert run(app, listener_id).stored == 3
    assert pop3_count(dovecot, mailbox_user) == 0


def test_pop3_with_a_time_limit_deletes_what_it_stored_and_leaves_the_rest(
    app, dovecot, mailbox_user, mailbox_account, make_listener
):
    for n in range(5):
        dovecot.deliver(mailbox_user.login, make_raw(f"Order {n}"))
    listener_id = make_listener(mailbox_account("pop3"), after_processing="delete", max_batch=2)
    first = run(app, listener_id, until=time.monotonic())
    assert (first.summary(), first.more) == ("fetched 2, stored 2, duplicates 0", True)
    assert pop3_count(dovecot, mailbox_user) == 3
    rest = run(app, listener_id)
    assert (rest.summary(), rest.more) == ("fetched 3, stored 3, duplicates 0", False)
    assert pop3_count(dovecot, mailbox_user) == 0
    assert len({r.raw for r in stored(app)}) == 5


def test_pop3_crash_after_commit_deletes_on_the_next_poll(
    app, dovecot, mailbox_user, mailbox_account, make_listener
):
    dovecot.deliver(mailbox_user.login, make_raw("Order 1"))
    listener_id = make_listener(mailbox_account("pop3"), after_processing="delete")
    with pytest.raises(Crash):
        run(app, listener_id, crash)
    assert pop3_count(dovecot, mailbox_user) == 1
    assert run(app, listener_id).summary() == "fetched 0, stored 0, duplicates 0"
    assert pop3_count(dovecot, mailbox_user) == 0
    assert len(stored(app)) == 1


def test_health_records_success_and_failure(
    app, dovecot, mailbox_user, mailbox_account, make_listener, make_account
):
    dovecot.deliver(mailbox_user.login, make_raw("Order 1"))
    good = make_listener(mailbox_account())
    bad = make_listener(
        make_account(
            receiver_port=dovecot.imap_port,
            receiver_user_id=mailbox_user.login,
            receiver_password="wrong",
        )
    )
    run(app, good)
    failed = run(app, bad)

    assert not failed.ok
    assert "Authentication failed" in failed.errors[0]
    with app.app_context():
        ok_row = db.session.get(EmailListener, good)
        assert ok_row.last_poll_ok is True
        assert ok_row.last_poll_at is not None
        assert ok_row.processed_count == 0  # stored; ingest counts it when it has decided
        assert ok_row.last_error == ""
        bad_row = db.session.get(EmailListener, bad)
        assert bad_row.last_poll_ok is False
        assert "Authentication failed" in bad_row.last_error
        assert bad_row.last_poll_at is not None


def test_committed_batches_are_enqueued_as_one_ingest_job(
    app, dovecot, mailbox_user, mailbox_account, make_listener, redis_client
):
    from rq import Queue

    for n in range(3):
        dovecot.deliver(mailbox_user.login, make_raw(f"Order {n}"))
    listener_id = make_listener(mailbox_account())
    with app.app_context():
        poll(db.session.get(EmailListener, listener_id))
    [job] = Queue("inbound", connection=redis_client).get_jobs()
    assert job.func_name == "workers.inbound.ingest_messages"
    assert job.args == ([r.id for r in stored(app)],)


def test_idle_announces_new_mail_within_seconds(
    app, dovecot, mailbox_user, mailbox_account, make_listener
):
    import queue
    import threading
    import time

    from workers.listeners import IdleWatcher

    listener_id = make_listener(mailbox_account())
    announced: queue.Queue[float] = queue.Queue()
    stop = threading.Event()
    watcher = IdleWatcher(
        app, listener_id, stop, on_new=lambda _id: announced.put(time.monotonic())
    )
    watcher.start()
    try:
        # Once at start, for mail that arrived while nobody watched.
        announced.get(timeout=10)
        time.sleep(0.3)
        delivered = time.monotonic()
        dovecot.deliver(mailbox_user.login, make_raw("Urgent"))
        latency = announced.get(timeout=10) - delivered
        assert latency < 5
        assert run(app, listener_id).stored == 1
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert not watcher.is_alive()
    assert watcher.last_error == ""


def test_a_missing_folder_is_reported_in_the_listener_health(
    app, dovecot, mailbox_user, mailbox_account, make_listener
):
    listener_id = make_listener(mailbox_account(), folder="Gone")
    result = run(app, listener_id)
    assert not result.ok
    with app.app_context():
        listener = db.session.get(EmailListener, listener_id)
        assert listener.last_poll_ok is False
        assert listener.last_error.startswith(
            "The folder Gone cannot be opened: the server answered Mailbox doesn't exist: Gone"
        )
