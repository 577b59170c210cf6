"""Approval by email end to end: the approver's reply in the mailbox -> the case moved on.

    python bench/approval_roundtrip.py [--cases 36] [--notifications 300] [--rounds 5]
                                       [--workers 2] [--no-pipelining]
                                       [--redis-url redis://127.0.0.1:6379/14]

Starts a private Dovecot (the test suite's server class), an aiosmtpd server in this process,
`flask worker` processes and `flask listeners watch` (IMAP IDLE) on a fresh SQLite database.
Opens N cases that wait for approval; the workers send the approval requests to aiosmtpd.
Then, one case at a time, it delivers the approver's reply (built from the captured request
as a mail program does: to its Reply-To, "Re:" subject, In-Reply-To, APPROVE on the first line,
the request quoted below) into the Dovecot mailbox and measures the time until the case has
left the approval stage in the database. Prints median, p95 and max (target: p95 < 2 s).

Then, with the workers stopped, it writes M notifications to the outbox and times the real
sender (`workers.outbound.send_outbound` on their ids, in this process) against smtplib
sending the very same messages (the bytes the server received) over one reused connection to
the same server, R rounds of each in turn. Prints the median rates and the median of the
rounds' ratios (target >= 0.8). The server offers PIPELINING, as the common servers do, which
the sender uses and smtplib does not; `--no-pipelining` measures against a server without. The
Redis database given
is emptied before and after: use one nothing else uses.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from imapclient import IMAPClient
from redis import Redis
from rq import Worker
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.support import save_mailbox_account, use_throwaway_instance  # noqa: E402
from tests.fixtures.dovecot import DovecotServer, _find_dovecot, _mail_owner  # noqa: E402
from tests.fixtures.smtp import CapturedMessage, SmtpServer, _Controller, _Recorder  # noqa: E402
from tests.fixtures.tls import make_test_pki  # noqa: E402
from tests.support.approvals import (  # noqa: E402
    MAILBOX_ADDRESS,
    approval_draft,
    reply_to,
)
from webapp import create_app  # noqa: E402
from webapp.extensions import db  # noqa: E402
from webapp.models import Case, CaseType, EmailAccount, EmailListener, OutboundKind  # noqa: E402
from webapp.services import cases as case_service  # noqa: E402
from webapp.services import casetypes as casetype_service  # noqa: E402
from webapp.services import rules as rule_service  # noqa: E402
from webapp.services.outbox import queue_message  # noqa: E402

PASSWORD = "bench-mailbox-password"  # noqa: S105 - a throwaway mailbox on a private server
APPROVAL_STAGE = "manager_approval"
CASE_TIMEOUT = 30.0
SETTLE_SECONDS = 1.0
TARGET_P95 = 2.0
TARGET_RATIO = 0.8
IDLE_SAMPLES = 20


def start_smtp(pipelining: bool) -> SmtpServer:
    """The test suite's recording aiosmtpd server, plain SMTP without AUTH, in a thread;
    offering PIPELINING, as the common servers do, unless told not to."""
    recorder = _Recorder(pipelining)
    controller = _Controller(
        recorder,
        xoauth2_tokens={},
        require_auth=False,
        auth_exclude_mechanism=["LOGIN", "PLAIN", "XOAUTH2"],
        auth_require_tls=False,
    )
    controller.start()
    return SmtpServer(controller, recorder, "none")


def set_up(server: DovecotServer, user: str, smtp: SmtpServer) -> int:
    """An approval case type, an account (SMTP to aiosmtpd, IMAP from Dovecot) and an IMAP
    listener with IDLE on; returns the case type id."""
    case_type = casetype_service.create_case_type(
        "Expense approval", "EXP", starter="expense-approval"
    )
    casetype_service.save_draft(case_type, approval_draft())
    casetype_service.publish(case_type, None)
    account = save_mailbox_account(
        MAILBOX_ADDRESS, server, user, PASSWORD, smtp_host=smtp.host, smtp_port=smtp.port
    )
    case_type.email_account_id = account.id
    rule = rule_service.save_rule(
        None,
        rule_service.RuleData(
            name="Expenses by email",
            action="create_case",
            case_type_id=case_type.id,
            mappings=[{"field": "amount", "source": "body_key", "value": "Amount"}],
        ),
    )
    db.session.add(
        EmailListener(
            name="Bench listener",
            account_id=account.id,
            rule_id=rule.id,
            folder="INBOX",
            after_processing="mark_read",
            use_idle=True,
            poll_interval_seconds=300,
        )
    )
    db.session.commit()
    return case_type.id


def manager(i: int) -> str:
    return f"manager{i}@example.com"


def open_cases(case_type_id: int, count: int) -> list[str]:
    """`count` cases waiting for the manager's approval (their requests go to the outbox)."""
    case_type = db.session.get(CaseType, case_type_id)
    assert case_type is not None
    references = []
    for i in range(count):
        case = case_service.open_case(
            case_type,
            # One manager per case: the outbox's limit per recipient holds more than ~30
            # messages an hour to one address, which is its purpose and not what is measured.
            {"amount": f"{100 + i}.00", "category": "Travel", "manager_email": manager(i)},
            subject=f"Trip {i}",
            requester=f"employee{i}@example.com",
            user=None,
            channel="email",
        )
        db.session.commit()
        references.append(case.reference)
    return references


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "flask", *command], cwd=ROOT, env=env, stdout=subprocess.DEVNULL
    )


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def requests_by_case(smtp: SmtpServer, references: list[str]) -> dict[str, CapturedMessage]:
    """The approval request each case's approver received, by case reference."""
    found: dict[str, CapturedMessage] = {}
    for message in smtp.messages:
        parsed = message.parsed
        reply_address = str(parsed.get("Reply-To", ""))
        if "+" not in reply_address:
            continue
        for reference in references:
            if f"[{reference}]" in str(parsed.get("Subject", "")):
                found.setdefault(reference, message)
    return found


def stage_of(reference: str) -> str:
    db.session.rollback()  # a fresh snapshot on every look
    return db.session.scalar(select(Case.stage).where(Case.reference == reference)) or ""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def round_trips(
    server: DovecotServer, user: str, smtp: SmtpServer, references: list[str]
) -> list[float]:
    captured = requests_by_case(smtp, references)
    missing = [r for r in references if r not in captured]
    if missing:
        raise SystemExit(f"no approval request was captured for {missing[:5]}")
    seconds = []
    for reference in references:
        approver = captured[reference].rcpt_tos[0]
        raw = reply_to(captured[reference], "APPROVE", sender=approver)
        server.deliver(user, raw)
        delivered = time.perf_counter()
        while stage_of(reference) == APPROVAL_STAGE:
            if time.perf_counter() - delivered > CASE_TIMEOUT:
                raise SystemExit(f"{reference} did not move within {CASE_TIMEOUT} s")
            time.sleep(0.005)
        seconds.append(time.perf_counter() - delivered)
    return seconds


def idle_latency(server: DovecotServer, raws: list[bytes]) -> list[float]:
    """Seconds from delivering each message until a bare IMAP IDLE session hears of it: the
    part of a round trip that is Dovecot's alone."""
    user = server.add_user(f"bench-idle-{os.getpid()}", PASSWORD)
    seconds = []
    with IMAPClient(server.host, port=server.imap_port, ssl=False) as client:
        client.login(user, PASSWORD)
        client.select_folder("INBOX")
        for raw in raws:
            client.idle()
            server.deliver(user, raw)
            delivered = time.perf_counter()
            heard = False
            while not heard:
                if time.perf_counter() - delivered > CASE_TIMEOUT:
                    raise SystemExit("IDLE did not report a delivered message")
                responses = client.idle_check(timeout=1.0)
                heard = any(len(r) > 1 and r[1] == b"EXISTS" for r in responses)
            seconds.append(time.perf_counter() - delivered)
            client.idle_done()
    return seconds


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def report_round_trips(seconds: list[float], idle: list[float], workers: int) -> None:
    median, p95 = statistics.median(seconds), percentile(seconds, 0.95)
    print(
        f"reply delivered -> case moved, {len(seconds)} cases, IMAP IDLE, "
        f"{workers} worker(s), SQLite: median {ms(median)}, p95 {ms(p95)}, "
        f"max {ms(max(seconds))} "
        f"(target p95 < {TARGET_P95:.0f} s: {'met' if p95 < TARGET_P95 else 'NOT met'})"
    )
    print(
        f"  of which Dovecot: delivered -> a bare IDLE session hears EXISTS, {len(idle)} "
        f"messages: median {ms(statistics.median(idle))}, "
        f"p95 {ms(percentile(idle, 0.95))}"
    )


def sender_rates(smtp: SmtpServer, count: int) -> tuple[float, float]:
    """(our sender's messages/s, smtplib's messages/s on one connection) on the same messages."""
    from workers.outbound import send_outbound

    account = db.session.scalar(select(EmailAccount).where(EmailAccount.account_id == "bench"))
    ids = []
    for i in range(count):
        outbound = queue_message(
            None,
            kind=OutboundKind.NOTIFICATION,
            account=account,
            recipients=[f"reader{i}@example.com"],
            subject=f"Weekly figures {i}",
            body="The figures of the week are ready.\n\n" + "Line of the report.\n" * 20,
        )
        db.session.flush()
        ids.append(outbound.id)
    db.session.commit()
    before = len(smtp.messages)
    started = time.perf_counter()
    send_outbound(ids)
    ours = time.perf_counter() - started
    sent = smtp.wait_for(before + count, timeout=60)[before:]
    db.session.rollback()

    started = time.perf_counter()
    with smtplib.SMTP(smtp.host, smtp.port) as client:
        for message in sent:
            client.sendmail(message.mail_from, message.rcpt_tos, message.raw)
    raw = time.perf_counter() - started
    smtp.wait_for(before + 2 * count, timeout=60)
    return count / ours, count / raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=36)
    parser.add_argument("--notifications", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the sender measurement")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--no-pipelining",
        action="store_true",
        help="the SMTP server does not offer PIPELINING: one command, one answer",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
        help="a Redis database of its own: it is emptied",
    )
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="casemail-bench-"))
    folder.chmod(0o711)  # Dovecot's processes run as another user and must reach their files
    use_throwaway_instance(
        folder,
        CASEMAIL_DEV_SANDBOX="0",
        DATABASE_URL=f"sqlite:///{folder}/bench.db",
        REDIS_URL=args.redis_url,
    )
    env = dict(os.environ, FLASK_APP="wsgi", PYTHONUNBUFFERED="1")
    redis = Redis.from_url(args.redis_url)
    redis.flushdb()
    dovecot_root = folder / "dovecot"
    dovecot_root.mkdir(mode=0o711)
    server = DovecotServer(_find_dovecot(), dovecot_root, make_test_pki(folder), _mail_owner())
    server.start()
    smtp = start_smtp(pipelining=not args.no_pipelining)
    processes: list[subprocess.Popen[bytes]] = []
    app = create_app()
    try:
        user = server.add_user(f"bench-{os.getpid()}", PASSWORD)
        with app.app_context():
            db.create_all()
            case_type_id = set_up(server, user, smtp)
        processes = [start(["worker"], env) for _ in range(args.workers)]
        wait_for(
            lambda: len(Worker.all(connection=redis)) >= args.workers, 30, "the workers to start"
        )
        processes.append(start(["listeners", "watch"], env))
        with app.app_context():
            references = open_cases(case_type_id, args.cases)
            wait_for(
                lambda: len(requests_by_case(smtp, references)) == len(references),
                120,
                "the approval requests to be sent",
            )
            time.sleep(SETTLE_SECONDS)  # IDLE established, the watcher's first poll done
            if references:
                replies = [
                    reply_to(message, "APPROVE", sender=message.rcpt_tos[0])
                    for message in requests_by_case(smtp, references).values()
                ]
                idle = idle_latency(server, replies[:IDLE_SAMPLES])
                seconds = round_trips(server, user, smtp, references)
                report_round_trips(seconds, idle, args.workers)
            stop(processes)
            processes = []
            redis.flushdb()
            rounds = [sender_rates(smtp, args.notifications) for _ in range(args.rounds)]
            # Each round's two rates are taken moments apart: their ratio moves much less
            # with the machine's load than the rates do, so the median of the ratios is shown.
            ratios = [ours / raw for ours, raw in rounds]
            ratio = statistics.median(ratios)
            print(
                f"sending {args.notifications} notifications, {args.rounds} rounds, server "
                f"{'without' if args.no_pipelining else 'offering'} PIPELINING: "
                f"send_outbound {statistics.median(o for o, _ in rounds):.0f} msg/s, "
                f"smtplib on one connection {statistics.median(r for _, r in rounds):.0f} msg/s, "
                f"ratio {ratio:.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f}) "
                f"(target >= {TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'NOT met'})"
            )
            db.session.remove()
            db.engine.dispose()
    finally:
        stop(processes)
        smtp.stop()
        server.stop()
        redis.flushdb()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
