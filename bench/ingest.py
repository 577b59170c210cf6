"""Incoming mail end to end: Dovecot -> listener poll -> RQ ingest workers -> cases.

    python bench/ingest.py [--messages 500] [--workers 1,2] [--runs 3]
                           [--database sqlite|postgres|all] [--redis-url redis://127.0.0.1:6379/13]

Starts a private Dovecot (the test suite's server class), then for each database and worker
count, `--runs` times: delivers the same N messages (mixed sizes, HTML, attachments, replies)
to a fresh mailbox, measures the raw limit on them (imapclient BODY.PEEK[] batch fetch +
email.message_from_bytes with policy.default, before and after the run, averaged), and runs the
real thing on a fresh database: one listener poll in this process while `flask worker --queue
inbound` processes (SimpleWorker) ingest the batches it enqueues, until every message is
processed. Then, on another fresh database and mailbox, the poll alone stores the messages with
no worker running, and the clock measures the workers ingesting them: "ingest alone", which is
what a second worker can speed up; beside it, with more than one worker, the raw fetch + parse
split over as many processes at once against one process: what this machine gives for this
work with more processes. Prints messages per second, the raw limit and the ratio, per
run and as the median of the runs, with the CPU time per message of the raw fetch + parse, of
the poll and of the workers (Linux /proc), which moves much less with the machine's load,
and how many of the machine's cores were busy while the workers ingested alone (every process,
PostgreSQL's included): a second worker can gain at most what the cores left idle by the first
allow, which the medians print beside its gain.
The workers are started, registered and warmed up before any clock: each ingests a batch of
20 messages of the same kinds, which are then deleted with their cases.
PostgreSQL (BENCH_POSTGRES_URL or TEST_POSTGRES_URL) is used in a schema of its own, dropped
afterwards. The Redis database given is emptied before each run: use one nothing else uses.
"""

from __future__ import annotations

import argparse
import email
import multiprocessing
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from multiprocessing.queues import SimpleQueue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import psycopg
from flask import Flask
from imapclient import IMAPClient
from redis import Redis
from rq import Queue, Worker
from rq.job import JobStatus
from sqlalchemy import delete, func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.support import save_mailbox_account, use_throwaway_instance  # noqa: E402
from tests.fixtures.dovecot import DovecotServer, _find_dovecot, _mail_owner  # noqa: E402
from tests.fixtures.tls import make_test_pki  # noqa: E402
from webapp import create_app  # noqa: E402
from webapp.extensions import db  # noqa: E402
from webapp.models import Case, EmailListener, InboundMessage, InboundStatus  # noqa: E402
from webapp.services import casetypes as casetype_service  # noqa: E402
from webapp.services import rules as rule_service  # noqa: E402
from webapp.services.intake import store_for_listener  # noqa: E402
from webapp.services.receiving import poll  # noqa: E402
from workers.inbound import enqueue_ingest, ingest_messages  # noqa: E402
from workers.queues import INBOUND  # noqa: E402

BATCH = 100  # the listener's max_batch, and the raw fetch's batch
WARM_UP = 20  # messages each worker ingests before the clock starts
PASSWORD = "bench-mailbox-password"  # noqa: S105 - a throwaway mailbox on a private server
TIMEOUT = 900.0
LABELS = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


@dataclass(frozen=True)
class Figures:
    rate: float  # messages/s from the start of the poll until every message is processed
    poll_rate: float  # messages/s of the poll alone (fetch, store, commit, flag, enqueue)
    ingest_rate: float  # messages/s of the workers alone, on messages stored before
    limit: float  # messages/s of the bare fetch + parse of the same messages
    raw_cpu: float  # CPU seconds per message of the bare fetch + parse
    raw_gain: float  # the fetch + parse's speed in `workers` processes at once against in one
    poll_cpu: float  # CPU seconds per message of the poll (this process)
    ingest_cpu: float  # CPU seconds per message of the workers, ingest alone
    busy: float  # cores of the machine busy while the workers ingest alone (all processes)
    load: float  # the machine's load average (1 minute) at the end of the run
    statuses: dict[str, int]


def build_messages(count: int, tag: str = "") -> list[bytes]:
    """`count` messages: plain, HTML with an inline image, a PDF attachment, and replies; `tag`
    sets their Message-IDs and senders apart from other sets'."""
    messages: list[bytes] = []
    ids: list[str] = []
    for i in range(count):
        msg = EmailMessage(policy=policy.SMTP)
        message_id = f"<bench-{tag}{i}@customer.example>"
        sender = f"customer{tag}{i}@customer.example"
        body = f"Amount: {10 + i % 90}.50\nCategory: Travel\n\n" + "Details of the trip. " * 20
        kind = i % 20
        if kind >= 17 and i >= 3:  # 15%: a reply to an earlier message, from its sender
            original = i - 3
            sender = f"customer{tag}{original}@customer.example"
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


@contextmanager
def _mailbox(server: DovecotServer, user: str) -> Iterator[IMAPClient]:
    """An IMAP session on the user's INBOX, read-only."""
    with IMAPClient(server.host, port=server.imap_port, ssl=False) as client:
        client._imap.debug = 0  # as the poll does: its protocol logging makes fetching 4x slower
        client.login(user, PASSWORD)
        client.select_folder("INBOX", readonly=True)
        yield client


def _fetch_and_parse(client: IMAPClient, uids: list[int]) -> int:
    """Fetch the messages `uids` in batches and parse each, nothing else; how many there were."""
    parsed = 0
    for start in range(0, len(uids), BATCH):
        for data in client.fetch(uids[start : start + BATCH], ["BODY.PEEK[]"]).values():
            email.message_from_bytes(data[b"BODY[]"], policy=policy.default)
            parsed += 1
    return parsed


def raw_limit(server: DovecotServer, user: str, count: int) -> tuple[float, float]:
    """(messages/s, CPU seconds/message) of fetching and parsing the mailbox, nothing else."""
    started, cpu = time.perf_counter(), time.process_time()
    with _mailbox(server, user) as client:
        parsed = _fetch_and_parse(client, sorted(client.search(["ALL"])))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    if parsed != count:
        raise SystemExit(f"raw fetch saw {parsed} messages, expected {count}")
    return count / elapsed, cpu / count


def _fetch_and_parse_share(
    server: DovecotServer, user: str, share: list[int], start: Barrier, done: SimpleQueue[int]
) -> None:
    with _mailbox(server, user) as client:
        start.wait()
        done.put(_fetch_and_parse(client, share))


def parallel_raw_rate(server: DovecotServer, user: str, processes: int) -> float:
    """Messages/s of fetching and parsing the mailbox in `processes` processes at once, each its
    own share over its own connection: how much more this machine does of this work with more
    processes, the ceiling for what more workers can gain."""
    with _mailbox(server, user) as client:
        uids = sorted(client.search(["ALL"]))
    context = multiprocessing.get_context("fork")
    start, done = context.Barrier(processes + 1), context.SimpleQueue()
    children = [
        context.Process(
            target=_fetch_and_parse_share, args=(server, user, uids[n::processes], start, done)
        )
        for n in range(processes)
    ]
    for child in children:
        child.start()
    start.wait(timeout=30)
    started = time.perf_counter()
    parsed = sum(done.get() for _ in children)
    elapsed = time.perf_counter() - started
    for child in children:
        child.join()
    if parsed != len(uids):
        raise SystemExit(f"the parallel raw fetch saw {parsed} messages, expected {len(uids)}")
    return parsed / elapsed


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
    account = save_mailbox_account("expenses@casemail.example", server, user, PASSWORD)
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


def start_workers(
    count: int, redis: Redis, app: Flask, listener_id: int
) -> list[subprocess.Popen[bytes]]:
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
    warm_up(count, redis, app, listener_id, workers)
    return workers


def warm_up(
    count: int, redis: Redis, app: Flask, listener_id: int, workers: list[subprocess.Popen[bytes]]
) -> None:
    """Have each worker ingest a batch of WARM_UP messages of the same kinds as the measured
    ones, then delete them and their cases: the first real batch a process ingests costs more
    (statements compiled, caches filled; about 30 ms more than the next on PostgreSQL), which a
    worker that has been running for a while does not pay. The clock measures ingesting only."""
    queue = Queue(INBOUND, connection=redis)
    with app.app_context():
        listener = db.session.get(EmailListener, listener_id)
        warming, ids = [], []
        for n in range(count):
            batch = [
                store_for_listener(raw, "mta", listener).id
                for raw in build_messages(WARM_UP, tag=f"warm{n}-")
            ]
            db.session.commit()
            ids += batch
            warming.append(queue.enqueue(ingest_messages, batch))
        deadline = time.monotonic() + 60
        while not all(job.get_status() == JobStatus.FINISHED for job in warming):
            if time.monotonic() > deadline or any(j.is_failed for j in warming):
                stop_workers(workers)
                raise SystemExit("the workers did not warm up")
            time.sleep(0.05)
        cases = db.session.scalars(
            select(InboundMessage.case_id).where(
                InboundMessage.id.in_(ids), InboundMessage.case_id.is_not(None)
            )
        ).all()
        db.session.execute(delete(InboundMessage).where(InboundMessage.id.in_(ids)))
        db.session.execute(delete(Case).where(Case.id.in_(cases)))  # events, attachments too
        db.session.commit()
        db.session.remove()


def cpu_seconds(workers: list[subprocess.Popen[bytes]]) -> float:
    """CPU time (user + system) the worker processes have used so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for worker in workers:
        fields = Path(f"/proc/{worker.pid}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def machine_ticks() -> tuple[int, int]:
    """(all, idle) CPU time of the whole machine so far, in ticks (Linux /proc/stat): user,
    nice, system, idle, iowait, irq, softirq and steal (guest time is in user already);
    idle counts iowait, and steal (time the host gave to others) too."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(fields), fields[3] + fields[4] + fields[7]


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.wait(timeout=30)


@contextmanager
def fresh_database(kind: str, folder: Path) -> Iterator[str]:
    """The URL of an empty database: an SQLite file, or a PostgreSQL schema of its own."""
    if kind == "sqlite":
        yield f"sqlite:///{folder}/bench-{secrets.token_hex(4)}.db"
        return
    base = postgres_base()
    assert base is not None
    schema = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def postgres_base() -> str | None:
    return os.environ.get("BENCH_POSTGRES_URL") or os.environ.get("TEST_POSTGRES_URL")


def postgres_answers() -> bool:
    base = postgres_base()
    if not base:
        return False
    try:
        with psycopg.connect(base, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def app_for(url: str, redis_url: str) -> Flask:
    """An app on `url` with its tables created; the worker processes inherit the settings."""
    os.environ["DATABASE_URL"] = url
    os.environ["REDIS_URL"] = redis_url
    app = create_app()
    with app.app_context():
        db.create_all()
    return app


def wait_until_ingested(started: float) -> dict[str, int]:
    """Wait until no message is left "received"; the statuses then.

    It asks every 10 ms, on a connection of its own in autocommit, with no ORM session:
    about 0.2 ms of this process's CPU a question, where a session's query and rollback took
    three times that, which the workers ingesting on the same cores would lose."""
    waiting = select(func.count()).where(InboundMessage.status == InboundStatus.RECEIVED.value)
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        while connection.execute(waiting).scalar():
            if time.perf_counter() - started > TIMEOUT:
                raise SystemExit("the workers did not finish in time")
            time.sleep(0.01)
        statuses = dict(
            connection.execute(
                select(InboundMessage.status, func.count()).group_by(InboundMessage.status)
            ).all()
        )
    db.session.remove()
    db.engine.dispose()
    return statuses


def end_to_end(
    server: DovecotServer, user: str, url: str, workers: int, redis_url: str, count: int
) -> tuple[float, float, float, dict[str, int]]:
    """(messages/s end to end, messages/s of the poll, its CPU seconds per message, statuses):
    the poll and the workers at the same time."""
    app = app_for(url, redis_url)
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    with app.app_context():
        listener_id = set_up_listener(server, user)
    pool = start_workers(workers, redis, app, listener_id)
    try:
        with app.app_context():
            started, cpu = time.perf_counter(), time.process_time()
            result = poll(db.session.get(EmailListener, listener_id))
            if result.errors or result.stored != count:
                raise SystemExit(f"the poll stored {result.stored}: {result.errors}")
            polled, cpu = time.perf_counter() - started, time.process_time() - cpu
            statuses = wait_until_ingested(started)
            elapsed = time.perf_counter() - started
    finally:
        stop_workers(pool)
        redis.flushdb()
    return count / elapsed, count / polled, cpu / count, statuses


def ingest_alone(
    server: DovecotServer, user: str, url: str, workers: int, redis_url: str, count: int
) -> tuple[float, float, float]:
    """(messages/s, the workers' CPU seconds per message, cores busy) of the workers ingesting
    messages the poll stored before the clock started. Cores busy counts every process of the
    machine (the workers, PostgreSQL, this one's waiting), from the CPU time it did not idle."""
    app = app_for(url, redis_url)
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    stored: list[int] = []
    with app.app_context():
        listener_id = set_up_listener(server, user)
        result = poll(db.session.get(EmailListener, listener_id), committed=stored.extend)
        if result.errors or len(stored) != count:
            raise SystemExit(f"the poll stored {len(stored)}: {result.errors}")
        db.session.remove()
    pool = start_workers(workers, redis, app, listener_id)
    try:
        with app.app_context():
            started, cpu, ticks = time.perf_counter(), cpu_seconds(pool), machine_ticks()
            enqueue_ingest(stored)
            wait_until_ingested(started)
            elapsed, cpu = time.perf_counter() - started, cpu_seconds(pool) - cpu
            (total, idle), (total_before, idle_before) = machine_ticks(), ticks
    finally:
        stop_workers(pool)
        redis.flushdb()
    busy = 1 - (idle - idle_before) / max(total - total_before, 1)
    return count / elapsed, cpu / count, busy * (os.cpu_count() or 1)


def run(
    server: DovecotServer,
    messages: list[bytes],
    kind: str,
    workers: int,
    redis_url: str,
    folder: Path,
) -> Figures:
    """The figures of one run with `workers` worker processes on a `kind` database."""
    tag = f"{kind}-{workers}-{secrets.token_hex(3)}"
    users = [server.add_user(f"bench-{tag}-{phase}", PASSWORD) for phase in ("e2e", "ingest")]
    for user in users:
        for raw in messages:
            server.deliver(user, raw)
    before, raw_cpu = raw_limit(server, users[0], len(messages))
    with fresh_database(kind, folder) as url:
        rate, poll_rate, poll_cpu, statuses = end_to_end(
            server, users[0], url, workers, redis_url, len(messages)
        )
    after, _ = raw_limit(server, users[0], len(messages))
    with fresh_database(kind, folder) as url:
        ingest_rate, ingest_cpu, busy = ingest_alone(
            server, users[1], url, workers, redis_url, len(messages)
        )
    raw_gain = 1.0
    if workers > 1:
        raw_gain = parallel_raw_rate(server, users[1], workers) / parallel_raw_rate(
            server, users[1], 1
        )
    return Figures(
        rate=rate,
        poll_rate=poll_rate,
        ingest_rate=ingest_rate,
        limit=(before + after) / 2,
        raw_cpu=raw_cpu,
        raw_gain=raw_gain,
        poll_cpu=poll_cpu,
        ingest_cpu=ingest_cpu,
        busy=busy,
        load=os.getloadavg()[0],
        statuses=statuses,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--workers", default="1,2", help="worker counts to run, in order")
    parser.add_argument("--runs", type=int, default=3, help="runs of each; medians are printed")
    parser.add_argument("--database", choices=("all", "sqlite", "postgres"), default="all")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"),
        help="a Redis database of its own: it is emptied",
    )
    args = parser.parse_args()
    counts = [int(c) for c in args.workers.split(",")]
    kinds = ["sqlite"] if args.database in ("all", "sqlite") else []
    if args.database in ("all", "postgres"):
        if postgres_answers():
            kinds.append("postgres")
        elif args.database == "postgres":
            raise SystemExit("PostgreSQL does not answer at BENCH_POSTGRES_URL/TEST_POSTGRES_URL")
        else:
            print("PostgreSQL skipped: set BENCH_POSTGRES_URL (or TEST_POSTGRES_URL)")

    folder = Path(tempfile.mkdtemp(prefix="casemail-bench-"))
    folder.chmod(0o711)  # Dovecot's processes run as another user and must reach their files
    use_throwaway_instance(folder)
    messages = build_messages(args.messages)
    megabytes = sum(len(m) for m in messages) / 1e6
    print(
        f"{len(messages)} messages, {megabytes:.1f} MB; {', '.join(kinds)}; "
        f"{args.runs} run(s) each; Redis {args.redis_url}; {os.cpu_count()} CPUs"
    )
    dovecot_root = folder / "dovecot"
    dovecot_root.mkdir(mode=0o711)
    server = DovecotServer(_find_dovecot(), dovecot_root, make_test_pki(folder), _mail_owner())
    server.start()
    results: dict[tuple[str, int], list[Figures]] = {}
    try:
        for number in range(1, args.runs + 1):
            for kind in kinds:
                for count in counts:
                    got = run(server, messages, kind, count, args.redis_url, folder)
                    results.setdefault((kind, count), []).append(got)
                    print(
                        f"run {number} {LABELS[kind]:10} {count} worker(s): "
                        f"{got.rate:6.1f} msg/s end to end (poll {got.poll_rate:6.1f}); "
                        f"ingest alone {got.ingest_rate:6.1f} msg/s; raw in {count} "
                        f"process(es) x{got.raw_gain:.2f} of one; "
                        f"raw limit {got.limit:6.1f} msg/s; ratio {got.rate / got.limit:.2f}; "
                        f"CPU ms/msg: raw {got.raw_cpu * 1e3:.2f}, poll {got.poll_cpu * 1e3:.2f}, "
                        f"ingest {got.ingest_cpu * 1e3:.2f}; cores busy ingesting alone "
                        f"{got.busy:.2f}; load {got.load:.1f}; {got.statuses}",
                        flush=True,
                    )
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print("medians:")
    cpus = os.cpu_count() or 1
    for kind in kinds:
        first = statistics.median(f.ingest_rate for f in results[(kind, counts[0])])
        first_busy = statistics.median(f.busy for f in results[(kind, counts[0])])
        for count in counts:
            runs = results[(kind, count)]
            ratios = [f.rate / f.limit for f in runs]
            ingest = statistics.median(f.ingest_rate for f in runs)
            raw_cpu = statistics.median(f.raw_cpu for f in runs)
            ingest_cpu = statistics.median(f.ingest_cpu for f in runs)
            raw_gain = statistics.median(f.raw_gain for f in runs)
            busy = statistics.median(f.busy for f in runs)
            # With `count` times the first count's workers, the machine gives at most as much
            # more as its idle cores allow: all its cores over those the first count kept busy.
            bound = min(count / counts[0], cpus / max(first_busy, 0.01))
            print(
                f"  {LABELS[kind]:10} {count} worker(s): "
                f"{statistics.median(f.rate for f in runs):6.1f} msg/s end to end, "
                f"raw limit {statistics.median(f.limit for f in runs):6.1f} msg/s, "
                f"ratio {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}); "
                f"ingest alone {ingest:6.1f} msg/s, x{ingest / first:.2f} of the first "
                f"(raw fetch + parse in {count} process(es): x{raw_gain:.2f} of one); "
                f"CPU per message: raw {raw_cpu * 1e3:.2f} ms, ingest {ingest_cpu * 1e3:.2f} ms; "
                f"cores busy ingesting alone {busy:.2f} of {cpus}"
                + (f" (at most x{bound:.2f} of the first on them)" if count != counts[0] else "")
            )


if __name__ == "__main__":
    main()
