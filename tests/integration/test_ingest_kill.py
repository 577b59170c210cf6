"""kill -9 of the workers and of the poll while a few hundred messages come in from Dovecot.

Real processes throughout: `flask listeners run ID --once` polls the mailbox (storing and
committing each batch before flagging it), `flask worker --queue inbound` ingests, and both are
killed with SIGKILL at points chosen from what the database shows. After a last poll and the
reconciler, every delivered message must be one stored message, and that message one case (or
one quarantine entry): no message lost, no case or timeline entry twice.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from imapclient import IMAPClient
from rq.registry import StartedJobRegistry
from sqlalchemy import func, select

from tests.fixtures.app import both_databases
from webapp.extensions import db, get_queue, get_redis
from webapp.models import Case, CaseEvent, EmailListener, InboundMessage
from webapp.services import rules as rule_service
from webapp.services.receiving import poll
from workers.inbound import requeue_stuck
from workers.listeners import _lock_name
from workers.queues import INBOUND
from workers.worker import run_worker

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 300
FIRST_DELIVERY = 200


def mail(i: int) -> bytes:
    """Message i: most open a case, every tenth (7, 17, ...) is quarantined (its amount cannot
    be read), and 3, 13, ... reply to 0, 10, ... (they join that case, or open one when they
    come first)."""
    sender = f"sender{i}@example.com"
    extra = ""
    body = "Amount: 10\r\nCategory: Travel\r\n"
    if i % 10 == 7:
        body = "Amount: unknown\r\n"
    elif i % 10 == 3:
        sender = f"sender{i - 3}@example.com"
        extra = f"In-Reply-To: <kill{i - 3}@example.com>\r\n"
    return (
        f"From: Sender <{sender}>\r\nTo: expenses@casemail.test\r\nSubject: Expense {i}\r\n"
        f"Message-ID: <kill{i}@example.com>\r\n{extra}\r\n{body}"
    ).encode()


def spawn(app_env: dict[str, str], *command: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "flask", *command],
        cwd=ROOT,
        env=app_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def wait_for(app, what: Callable[[], int], at_least: int, timeout: float = 30.0) -> int:
    """Wait until `what()` (a count read from the database) reaches `at_least`; its value."""
    deadline = time.monotonic() + timeout
    with app.app_context():
        while True:
            value = what()
            db.session.rollback()
            if value >= at_least or time.monotonic() > deadline:
                return value
            time.sleep(0.01)


def kill_during_a_batch(
    app_env: dict[str, str], worker_command: tuple[str, ...], started: StartedJobRegistry
) -> bool:
    """Start a worker and kill it while it runs a job; whether a job was cut off (left among
    the started ones, where only the reconciler finds its messages again)."""
    before = set(started.get_job_ids(cleanup=False))
    worker = spawn(app_env, *worker_command)
    deadline = time.monotonic() + 60
    try:
        while not set(started.get_job_ids(cleanup=False)) - before:
            if time.monotonic() > deadline or worker.poll() is not None:
                return False
            time.sleep(0.001)
    finally:
        kill(worker)
    return bool(set(started.get_job_ids(cleanup=False)) - before)


def stored() -> int:
    return db.session.scalar(select(func.count()).select_from(InboundMessage)) or 0


def decided() -> int:
    return (
        db.session.scalar(
            select(func.count())
            .select_from(InboundMessage)
            .where(InboundMessage.status != "received")
        )
        or 0
    )


@both_databases
def test_kill_9_of_workers_and_poll_loses_and_doubles_nothing(
    app, app_env, dovecot, mailbox_user, mailbox_account, make_listener, make_case_type
):
    case_type_id = make_case_type()
    with app.app_context():
        rule = rule_service.save_rule(
            None,
            rule_service.RuleData(
                name="Expenses by email",
                action="create_case",
                case_type_id=case_type_id,
                mappings=[
                    {"field": "amount", "source": "body_key", "value": "Amount"},
                    {"field": "category", "source": "body_key", "value": "Category"},
                ],
            ),
        )
        db.session.commit()
        rule_id = rule.id
    # Small poll batches: the poll commits often, so a kill lands between its commits.
    listener_id = make_listener(mailbox_account(), rule_id=rule_id, max_batch=10)
    for i in range(FIRST_DELIVERY):
        dovecot.deliver(mailbox_user.login, mail(i))
    redis = get_redis(app)
    poll_command = ("listeners", "run", str(listener_id), "--once")
    worker_command = ("worker", "--queue", INBOUND)

    # 1. The poll is killed after a few committed batches (the last one stored, maybe not
    #    flagged or enqueued); a worker is killed early in the work they brought.
    poller, worker = spawn(app_env, *poll_command), spawn(app_env, *worker_command)
    try:
        wait_for(app, stored, 30)
        kill(poller)
        wait_for(app, decided, 5)
    finally:
        kill(worker)
        kill(poller)
    redis.delete(_lock_name(listener_id))  # what its expiry would do after a killed poll

    # 2. The poll runs again and picks up where the killed one stopped; a worker is killed in
    #    the middle of the work.
    poller, worker = spawn(app_env, *poll_command), spawn(app_env, *worker_command)
    try:
        wait_for(app, decided, 90)
    finally:
        kill(worker)
    assert poller.wait(timeout=60) == 0

    # 3. More mail arrives; a worker is killed in the middle of a batch. The kills above may
    #    each have landed between two batches; this one is repeated until it cuts one off.
    for i in range(FIRST_DELIVERY, TOTAL):
        dovecot.deliver(mailbox_user.login, mail(i))
    poller = spawn(app_env, *poll_command)
    started = StartedJobRegistry(INBOUND, connection=redis)
    for _attempt in range(20):
        if kill_during_a_batch(app_env, worker_command, started):
            break
    else:
        raise AssertionError("no kill landed in the middle of a batch")
    assert poller.wait(timeout=60) == 0

    # 4. A last poll (nothing new on the server), then what the reconciler does after its bound,
    #    without waiting for it, and a worker that runs until the queue is empty.
    with app.app_context():
        listener = db.session.get(EmailListener, listener_id)
        assert poll(listener, committed=lambda ids: None).stored == 0
        waiting = set(
            db.session.scalars(select(InboundMessage.id).where(InboundMessage.status == "received"))
        )
        queued = {i for job in get_queue(INBOUND).jobs for i in job.args[0]}
        # The killed workers lost jobs: only the reconciler brings these messages back.
        assert waiting - queued
        requeue_stuck(timedelta(0))
    assert run_worker(app, [INBOUND], burst=True) is True

    with app.app_context():
        rows = db.session.execute(
            select(
                InboundMessage.message_id,
                InboundMessage.status,
                InboundMessage.case_id,
                InboundMessage.status_reason,
            )
        ).all()
        events = Counter(
            (case_id, action)
            for case_id, action in db.session.execute(select(CaseEvent.case_id, CaseEvent.action))
        )
        cases = db.session.scalar(select(func.count()).select_from(Case))
    # Every delivered message was stored exactly once.
    assert sorted(m for m, *_ in rows) == sorted(f"<kill{i}@example.com>" for i in range(TOTAL))
    by_id = {int(m[5:-13]): (status, case_id, reason) for m, status, case_id, reason in rows}
    # Each ended as a case (opened or joined) or in quarantine, none is left waiting.
    quarantined = {i for i, (status, _, _) in by_id.items() if status == "quarantined"}
    assert quarantined == {i for i in range(TOTAL) if i % 10 == 7}
    assert all(
        status == "processed" and case_id is not None
        for i, (status, case_id, _) in by_id.items()
        if i not in quarantined
    )
    # No case twice: every case was opened by exactly one message, and has one "Created".
    openers = [case_id for status, case_id, reason in by_id.values() if reason.startswith("Opened")]
    assert len(openers) == len(set(openers)) == cases
    assert all(events[(case_id, "Created")] == 1 for case_id in openers)
    # No timeline entry twice: one "Email in" per processed message, on its own case.
    per_case = Counter(case_id for status, case_id, _ in by_id.values() if status == "processed")
    emails_in = {case_id: n for (case_id, action), n in events.items() if action == "Email in"}
    assert emails_in == dict(per_case)
    # A reply that came after its original joined it.
    for i in range(3, TOTAL, 10):
        if by_id[i][2].startswith("Joins"):
            assert by_id[i][1] == by_id[i - 3][1]
    # And the mailbox shows every message as handled.
    with IMAPClient(dovecot.host, port=dovecot.imap_port, ssl=False) as client:
        client.login(mailbox_user.login, mailbox_user.password)
        client.select_folder("INBOX", readonly=True)
        assert len(client.search(["ALL"])) == TOTAL
        assert client.search(["UNSEEN"]) == []
