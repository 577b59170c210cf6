"""Sending the outbox: the sender job against plain smtplib, to the same local SMTP sink.

    python bench/outbox.py [--messages 500] [--rounds 3] [--job-size 100] [--database-url URL]
                           [--server thread|process] [--no-pipelining]
                           [--redis-url redis://127.0.0.1:6379/12]

Each round writes N stage notifications of a few cases to the outbox (committed, as a stage
change would), then times `send_outbound` on them in jobs of 100 ids (the sender's batch; a
stage change that notifies two people makes a job of 2: `--job-size 2`), called directly in an
app context: claim, build (threading, reply token, rate limits checked), send over the
account's SMTP connection (kept from one job to the next), record. Then it sends the very
bytes the sink received again with plain smtplib over one reused connection. Prints both rates
and their ratio (median of the rounds). The sink offers PIPELINING, as the common servers do,
which the sender uses and smtplib does not; `--no-pipelining` measures against a server without.
The database is a fresh SQLite file unless --database-url names another (it gets the tables
created; use an empty one). The Redis database given is emptied: use one nothing else uses.
"""

from __future__ import annotations

import argparse
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from flask import current_app
from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import selectinload

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.support import use_throwaway_instance  # noqa: E402
from tests.fixtures.smtp import _Controller, offering_pipelining  # noqa: E402
from webapp import create_app  # noqa: E402
from webapp.extensions import db  # noqa: E402
from webapp.mail.outbound import OutboundSpec, build_outbound, message_bytes  # noqa: E402
from webapp.models import Case, CaseType, OutboundKind, OutboundMessage  # noqa: E402
from webapp.services import cases as case_service  # noqa: E402
from webapp.services import casetypes as casetype_service  # noqa: E402
from webapp.services.accounts import save_account  # noqa: E402
from webapp.services.outbox import queue_message  # noqa: E402
from workers.outbound import BATCH, send_outbound  # noqa: E402

CASES = 20
BODY = (
    "Hello,\n\n{case} has entered the stage Manager approval. Amount: 120.50 (Travel).\n\n"
    "Open the case: https://casemail.example/cases/{case}\n\n"
) + "Notes of the requester about the trip and the receipts attached to the case. " * 6


class Sink:
    """An aiosmtpd handler that keeps what it receives; it offers PIPELINING, as Postfix, Exim,
    Exchange Online and Gmail do, unless told not to."""

    def __init__(self, pipelining: bool = True) -> None:
        self.lock = threading.Lock()
        self.received: list[tuple[str, list[str], bytes]] = []
        self.pipelining = pipelining

    def note_auth(self, mechanism: str) -> None:
        pass

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # this hook's job, by aiosmtpd's contract
        return offering_pipelining(responses) if self.pipelining else responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.received.append(
                (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        return "250 2.0.0 OK"

    def take(self) -> list[tuple[str, list[str], bytes]]:
        with self.lock:
            taken, self.received = self.received, []
        return taken


def run_sink_process(pipelining: bool) -> None:
    """The sink in a process of its own (`--server process`): prints its port, runs until
    standard input closes."""
    controller = _Controller(Sink(pipelining), xoauth2_tokens={}, require_auth=False)
    controller.start()
    print(controller.port, flush=True)
    sys.stdin.read()
    controller.stop()


def setup(port: int) -> list[int]:
    """An account sending to the sink and CASES open cases from it; returns the case ids."""
    account = save_account(
        None,
        "bench",
        {
            "name": "Bench",
            "smtp_email": "approvals@casemail.example",
            "smtp_display_name": "Casemail Approvals",
            "smtp_reply_to": "approvals@casemail.example",
            "smtp_user_id": "approvals@casemail.example",
            "smtp_auth": "none",
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_security": "none",
            "receiver_host": "127.0.0.1",
            "receiver_port": 143,
            "receiver_security": "none",
            "receiver_use_sender_credentials": False,
            "receiver_user_id": "nobody",
        },
        {"receiver_password": "x"},
    )
    case_type = casetype_service.create_case_type(
        "Expense approval", "EXP", starter="expense-approval"
    )
    casetype_service.publish(case_type, None)
    db.session.flush()
    case_type.email_account = account
    cases = [
        case_service.open_case(
            case_type,
            {
                "amount": "120.50",
                "expense_date": "2026-03-02",
                "category": "Travel",
                "manager_email": "manager@example.com",
                "notes": "Train",
            },
            subject=f"Trip {n}",
            requester=f"requester{n}@example.com",
            user=None,
        )
        for n in range(CASES)
    ]
    db.session.commit()
    return [c.id for c in cases]


def write_notifications(count: int, case_ids: list[int]) -> list[int]:
    """`count` stage notifications spread over the cases, committed; returns their ids."""
    rows = []
    cases = [db.session.get(Case, case_id) for case_id in case_ids]
    for n in range(count):
        case = cases[n % len(cases)]
        assert case is not None
        rows.append(
            queue_message(
                case,
                kind=OutboundKind.NOTIFICATION,
                recipients=[f"approver{n % 50}@example.com"],
                subject=f"Approve {case.reference}: 120.50 for Travel",
                body=BODY.format(case=case.reference),
            )
        )
    db.session.commit()
    return [r.id for r in rows]


def specs_of(ids: list[int]) -> list[OutboundSpec]:
    """What the stored messages say, as build_outbound takes it (loaded before timing)."""
    domain = current_app.config["CASEMAIL_MESSAGE_ID_DOMAIN"]
    rows = db.session.scalars(
        select(OutboundMessage)
        .where(OutboundMessage.id.in_(ids))
        .options(selectinload(OutboundMessage.case), selectinload(OutboundMessage.account))
        .order_by(OutboundMessage.id)
    ).all()
    specs = []
    for row in rows:
        assert row.account is not None and row.case is not None
        specs.append(
            OutboundSpec(
                from_address=row.account.smtp_email,
                from_name=row.account.smtp_display_name,
                reply_to=row.account.smtp_reply_to,
                to=tuple(row.recipients),
                subject=row.subject,
                text=row.body,
                message_id_domain=domain,
                message_id=row.message_id,
                automatic=True,
                case_id=row.case.reference,
            )
        )
    db.session.rollback()
    return specs


def smtplib_rate(port: int, messages: list[tuple[str, list[str], bytes]]) -> float:
    """Plain smtplib over one connection, sending bytes built beforehand."""
    client = smtplib.SMTP("127.0.0.1", port)
    started = time.perf_counter()
    for sender, recipients, raw in messages:
        client.sendmail(sender, recipients, raw)
    elapsed = time.perf_counter() - started
    client.quit()
    return len(messages) / elapsed


def build_and_smtplib_rate(port: int, specs: list[OutboundSpec]) -> float:
    """build_outbound + message_bytes + plain smtplib over one connection: no outbox."""
    client = smtplib.SMTP("127.0.0.1", port)
    started = time.perf_counter()
    for spec in specs:
        client.sendmail(spec.from_address, list(spec.to), message_bytes(build_outbound(spec)))
    elapsed = time.perf_counter() - started
    client.quit()
    return len(specs) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--job-size", type=int, default=BATCH, help=f"messages per job (default {BATCH})"
    )
    parser.add_argument("--database-url", default="", help="an empty database; default SQLite")
    parser.add_argument(
        "--server",
        choices=["thread", "process"],
        default="thread",
        help="run the SMTP sink in a thread of this process, or in a process of its own",
    )
    parser.add_argument(
        "--no-pipelining",
        action="store_true",
        help="the sink does not offer PIPELINING: one command, one answer, as smtplib sends",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"),
        help="a Redis database of its own: it is emptied",
    )
    args = parser.parse_args()
    if args.job_size < 1:
        parser.error("--job-size must be at least 1")
    folder = Path(tempfile.mkdtemp(prefix="casemail-bench-outbox-"))
    database = args.database_url or f"sqlite:///{folder / 'bench.db'}"
    use_throwaway_instance(
        folder,
        DATABASE_URL=database,
        REDIS_URL=args.redis_url,
        # High enough never to hold a message here, but still checked for every one.
        CASEMAIL_RATE_LIMIT_PER_RECIPIENT="1000000",
        CASEMAIL_RATE_LIMIT_PER_CASE="1000000",
    )
    Redis.from_url(args.redis_url).flushdb()
    sink = Sink(pipelining=not args.no_pipelining)
    child: subprocess.Popen[str] | None = None
    if args.server == "process":
        child = subprocess.Popen(
            [sys.executable, __file__, "--sink", "no" if args.no_pipelining else "yes"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        port = int(child.stdout.readline())
    else:
        controller = _Controller(sink, xoauth2_tokens={}, require_auth=False)
        controller.start()
        port = controller.port
    app = create_app()
    engine = database.split(":", 1)[0]
    ours: list[float] = []
    plain: list[float] = []
    built: list[float] = []
    try:
        with app.app_context():
            db.create_all()
            case_ids = setup(port)
            assert db.session.get(CaseType, 1) is not None
            for round_number in range(1, args.rounds + 1):
                ids = write_notifications(args.messages, case_ids)
                specs = specs_of(ids)
                started = time.perf_counter()
                results = []
                for start in range(0, len(ids), args.job_size):
                    results.extend(send_outbound(ids[start : start + args.job_size]))
                elapsed = time.perf_counter() - started
                sent = sum(1 for r in results if r.status == "sent")
                if sent != len(ids):
                    raise SystemExit(f"only {sent} of {len(ids)} were sent: {results[:3]}")
                ours.append(len(ids) / elapsed)
                # What the sink received; from a sink in another process, the same messages
                # built here (they differ in their Date header only).
                received = sink.take() or [
                    (spec.from_address, list(spec.to), message_bytes(build_outbound(spec)))
                    for spec in specs
                ]
                plain.append(smtplib_rate(port, received))
                built.append(build_and_smtplib_rate(port, specs))
                sink.take()
                print(
                    f"round {round_number}: send_outbound {ours[-1]:7.1f} msg/s; "
                    f"smtplib, bytes built before {plain[-1]:7.1f} msg/s "
                    f"(ratio {ours[-1] / plain[-1]:.2f}); build_outbound + smtplib "
                    f"{built[-1]:7.1f} msg/s (ratio {ours[-1] / built[-1]:.2f})"
                )
    finally:
        if child is not None:
            child.communicate(timeout=30)
        else:
            controller.stop()
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
    rate = statistics.median(ours)
    limit, building = statistics.median(plain), statistics.median(built)
    # Each round's figures were taken moments apart: their ratios vary less than the rates on
    # a busy machine, so the ratios reported are the medians of the rounds' ratios.
    ratios = [o / p for o, p in zip(ours, plain, strict=True)]
    against_plain = statistics.median(ratios)
    against_built = statistics.median(o / b for o, b in zip(ours, built, strict=True))
    print(
        f"{args.messages} notifications in jobs of {args.job_size}, {engine}, "
        f"SMTP sink in a {args.server} "
        f"{'without' if args.no_pipelining else 'offering'} PIPELINING, "
        f"median of {args.rounds} rounds: "
        f"send_outbound {rate:.1f} msg/s ({min(ours):.0f}-{max(ours):.0f}); "
        f"smtplib with bytes built before {limit:.1f} msg/s "
        f"(ratio {against_plain:.2f}, rounds {min(ratios):.2f}-{max(ratios):.2f}); "
        f"build_outbound + smtplib {building:.1f} msg/s "
        f"(ratio {against_built:.2f}); target >= 0.80"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--sink"]:
        run_sink_process(pipelining=sys.argv[2:] == ["yes"])
    else:
        main()
