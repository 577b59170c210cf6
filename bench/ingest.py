"""Incoming mail end to end: Dovecot -> listener poll -> RQ ingest workers -> cases.

    python bench/ingest.py [--messages 500] [--workers 1,2] [--redis-url redis://127.0.0.1:6379/13]

Starts a private Dovecot (the test suite's server class), then for each worker count: delivers
the same N messages (mixed sizes, HTML, attachments, replies) to a fresh mailbox, measures the
raw limit on them (imapclient BODY.PEEK[] batch fetch + email.message_from_bytes with
policy.default), and runs the real thing on a fresh SQLite database: one listener poll in this
process while `flask worker --queue inbound` processes (SimpleWorker) ingest the batches it
enqueues, until every message is processed. Prints messages per second, the raw limit and the
ratio. The Redis database given is emptied before each run: use one nothing else uses.
"""

from __future__ import annotations

import argparse
import email
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path

from cryptography.fernet import Fernet
from imapclient import IMAPClient
from redis import Redis
from rq import Worker
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.dovecot import DovecotServer, _find_dovecot, _mail_owner  # noqa: E402
from tests.fixtures.tls import make_test_pki  # noqa: E402
from webapp import create_app  # noqa: E402
from webapp.extensions import db  # noqa: E402
from webapp.models import EmailListener, InboundMessage, InboundStatus  # noqa: E402
from webapp.services import casetypes as casetype_service  # noqa: E402
from webapp.services import rules as rule_service  # noqa: E402
from webapp.services.accounts import save_account  # noqa: E402
from webapp.services.receiving import poll  # noqa: E402
from workers.queues import INBOUND  # noqa: E402

BATCH = 100  # the listener's max_batch, and the raw fetch's batch
PASSWORD = "bench-mailbox-password"  # noqa: S105 - a throwaway mailbox on a private server
TIMEOUT = 900.0


@dataclass(frozen=True)
class Figures:
    rate: float  # messages/s from the start of the poll until every message is processed
    poll_rate: float  # messages/s of the poll alone (fetch, store, commit, flag, enqueue)
    limit: float  # messages/s of the bare fetch + parse of the same messages
    statuses: dict[str, int]


def build_messages(count: int) -> list[bytes]:
    """`count` messages: plain, HTML with an inline image, a PDF attachment, and replies."""
    messages: list[bytes] = []
    ids: list[str] = []
    for i in range(count):
        msg = EmailMessage(policy=policy.SMTP)
        message_id = f"<bench-{i}@customer.example>"
        sender = f"customer{i}@customer.example"
        body = f"Amount: {10 + i % 90}.50\nCategory: Travel\n\n" + "Details of the trip. " * 20
        kind = i % 20
        if kind >= 17 and i >= 3:  # 15%: a reply to an earlier message, from its sender
            original = i - 3
            sender = f"customer{original}@customer.example"
            msg["Subject"] = f"Re: Expense {original}"
            msg["In-Reply-To"] = ids[original]
            msg["References"] = ids[original]
            msg.set_content("Here is the receipt you asked for.\n")
        else:
            msg["Subject"] = f"Expense {i}"
            msg.set_content(body)
            if kind < 4:  # 20%: HTML alternative with an inline image (~10 KB)
                msg.add_alternative(f"<p>{body}</p><img src='cid:logo@bench'>", subtype="html")
                msg.get_payload()[1].add_related(
                    os.urandom(10_000), "image", "png", cid="<logo@bench>"
                )
            elif kind < 7:  # 15%: a PDF attachment of 50-200 KB
                size = 50_000 + (i * 7919) % 150_000
                msg.add_attachment(
                    b"%PDF-1.4\n" + os.urandom(size),
                    maintype="application",
                    subtype="pdf",
                    filename=f"receipt-{i}.pdf",
                )
        msg["From"] = f"Customer {i} <{sender}>"
        msg["To"] = "expenses@casemail.example"
        msg["Message-ID"] = message_id
        msg["Date"] = email.utils.formatdate(localtime=False)
        ids.append(message_id)
        messages.append(msg.as_bytes())
    return messages


def raw_limit(server: DovecotServer, user: str, count: int) -> float:
    """Messages per second of fetching and parsing the mailbox, and nothing else."""
    started = time.perf_counter()
    with IMAPClient(server.host, port=server.imap_port, ssl=False) as client:
        client.login(user, PASSWORD)
        client.select_folder("INBOX", readonly=True)
        uids = sorted(client.search(["ALL"]))
        parsed = 0
        for start in range(0, len(uids), BATCH):
            batch = uids[start : start + BATCH]
            for data in client.fetch(batch, ["BODY.PEEK[]"]).values():
                email.message_from_bytes(data[b"BODY[]"], policy=policy.default)
                parsed += 1
    elapsed = time.perf_counter() - started
    if parsed != count:
        raise SystemExit(f"raw fetch saw {parsed} messages, expected {count}")
    return count / elapsed


def set_up_listener(server: DovecotServer, user: str) -> int:
    """A published expense case type, a rule opening its cases, an account and a listener."""
    case_type = casetype_service.create_case_type(
        "Expense approval", "EXP", starter="expense-approval"
    )
    casetype_service.publish(case_type, None)
    rule = rule_service.save_rule(
        None,
        rule_service.RuleData(
            name="Expenses by email",
            action="create_case",
            case_type_id=case_type.id,
            mappings=[
                {"field": "amount", "source": "body_key", "value": "Amount"},
                {"field": "category", "source": "body_key", "value": "Category"},
            ],
        ),
    )
    account = save_account(
        None,
        "bench",
        {
            "name": "Bench mailbox",
            "smtp_email": "expenses@casemail.example",
            "smtp_user_id": "expenses@casemail.example",
            "smtp_auth": "none",
            "smtp_host": "127.0.0.1",
            "smtp_port": 25,
            "smtp_security": "none",
            "receiver_protocol": "imap",
            "receiver_host": server.host,
            "receiver_port": server.imap_port,
            "receiver_security": "none",
            "receiver_use_sender_credentials": False,
            "receiver_user_id": user,
        },
        {"smtp_password": None, "receiver_password": PASSWORD},
    )
    listener = EmailListener(
        name="Bench listener",
        account_id=account.id,
        rule_id=rule.id,
        folder="INBOX",
        max_batch=BATCH,
        after_processing="mark_read",
    )
    db.session.add(listener)
    db.session.commit()
    return listener.id


def start_workers(count: int, redis: Redis) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, FLASK_APP="wsgi", PYTHONUNBUFFERED="1")
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "flask", "worker", "--queue", INBOUND],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    deadline = time.monotonic() + 30
    while len(Worker.all(connection=redis)) < count:
        if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
            stop_workers(workers)
            raise SystemExit("the workers did not start")
        time.sleep(0.05)
    return workers


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.wait(timeout=30)


def run(
    server: DovecotServer, messages: list[bytes], workers: int, redis_url: str, folder: Path
) -> Figures:
    """The figures of one run with `workers` worker processes."""
    user = server.add_user(f"bench-{workers}-{os.getpid()}", PASSWORD)
    for raw in messages:
        server.deliver(user, raw)
    limit = raw_limit(server, user, len(messages))

    os.environ["DATABASE_URL"] = f"sqlite:///{folder}/bench-{workers}.db"
    os.environ["REDIS_URL"] = redis_url
    app = create_app()
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    with app.app_context():
        db.create_all()
        listener_id = set_up_listener(server, user)
    pool = start_workers(workers, redis)
    try:
        with app.app_context():
            started = time.perf_counter()
            result = poll(db.session.get(EmailListener, listener_id))
            if result.errors or result.stored != len(messages):
                raise SystemExit(f"the poll stored {result.stored}: {result.errors}")
            polled = time.perf_counter() - started
            waiting = select(func.count()).where(
                InboundMessage.status == InboundStatus.RECEIVED.value
            )
            while db.session.scalar(waiting):
                db.session.rollback()
                if time.perf_counter() - started > TIMEOUT:
                    raise SystemExit("the workers did not finish in time")
                time.sleep(0.01)
            elapsed = time.perf_counter() - started
            statuses = dict(
                db.session.execute(
                    select(InboundMessage.status, func.count()).group_by(InboundMessage.status)
                ).all()
            )
            db.session.remove()
            db.engine.dispose()
    finally:
        stop_workers(pool)
        redis.flushdb()
    return Figures(len(messages) / elapsed, len(messages) / polled, limit, statuses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--workers", default="1,2", help="worker counts to run, in order")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"),
        help="a Redis database of its own: it is emptied",
    )
    args = parser.parse_args()
    counts = [int(c) for c in args.workers.split(",")]

    folder = Path(tempfile.mkdtemp(prefix="casemail-bench-"))
    folder.chmod(0o711)  # Dovecot's processes run as another user and must reach their files
    os.environ.update(
        CASEMAIL_ENV="development",
        CASEMAIL_INSTANCE_PATH=str(folder / "instance"),
        SECRET_KEY=secrets.token_hex(16),
        CASEMAIL_SECRET_KEYS=Fernet.generate_key().decode(),
        CASEMAIL_MAIL_HOST_POLICY="allow-private",
        CASEMAIL_LOG_LEVEL="WARNING",
    )
    messages = build_messages(args.messages)
    megabytes = sum(len(m) for m in messages) / 1e6
    print(f"{len(messages)} messages, {megabytes:.1f} MB; SQLite, Redis {args.redis_url}")
    dovecot_root = folder / "dovecot"
    dovecot_root.mkdir(mode=0o711)
    server = DovecotServer(_find_dovecot(), dovecot_root, make_test_pki(folder), _mail_owner())
    server.start()
    try:
        single = None
        for count in counts:
            got = run(server, messages, count, args.redis_url, folder)
            single = single or got.rate
            print(
                f"{count} worker(s): {got.rate:6.1f} msg/s end to end "
                f"(the poll alone {got.poll_rate:6.1f} msg/s); raw limit {got.limit:6.1f} msg/s; "
                f"ratio {got.rate / got.limit:.2f}; x{got.rate / single:.2f} of the first run; "
                f"{got.statuses}"
            )
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
