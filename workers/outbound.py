"""Sending the outbox: the job enqueued when a transaction that wrote messages commits, and the
sweeper that sends whatever that job missed.

A message is claimed ("sending", committed) before the server is contacted, and its result is
recorded after: a crash in between leaves it "sending", which the sweeper turns into "uncertain"
for an admin to decide, so no message goes out twice unnoticed. One job carries a batch, sent
in chunks over one connection per account by a thread of its own; one commit records the
answers of the chunk before the one on the wire and claims the one after it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from flask import Flask
from redis.exceptions import RedisError
from rq import Queue
from sqlalchemy import event
from sqlalchemy.orm import Session

from webapp.extensions import db, get_queue
from webapp.models import OutboundMessage, OutboundStatus
from webapp.models.types import utcnow
from workers.app import job
from workers.queues import OUTBOUND

if TYPE_CHECKING:
    from webapp.services.outbox import Answer, Claimed, Outgoing

log = logging.getLogger(__name__)

BATCH = 100  # messages per job
CHUNK = 50  # messages per claim and per record commit; a crash can leave two chunks uncertain
DISPATCH_SECONDS = 15
JOB_TIMEOUT = 900
RESULT_TTL = 60  # the results are in the database; RQ's copy is for a quick look only
_PENDING_KEY = "casemail.outbound_ids"


def enqueue_send(outbound_ids: Sequence[int]) -> bool:
    """Enqueue send jobs for committed messages, in batches; False (logged) when Redis is down,
    in which case the sweeper sends them later."""
    ids = list(outbound_ids)
    if not ids:
        return True
    queue = get_queue(OUTBOUND)
    try:
        queue.enqueue_many(
            [
                Queue.prepare_data(
                    send_outbound,
                    (ids[start : start + BATCH],),
                    timeout=JOB_TIMEOUT,
                    result_ttl=RESULT_TTL,
                )
                for start in range(0, len(ids), BATCH)
            ]
        )
    except RedisError as exc:
        log.warning(
            "could not enqueue %d outgoing messages (%s); the outbox sweeper will send them",
            len(ids),
            type(exc).__name__,
        )
        return False
    return True


@job
def send_outbound(outbound_ids: list[int]) -> list[Any]:
    """Send the given messages that are due and still pending, and, up to BATCH in all, the
    other due pending messages of the same accounts; returns a SendResult for each one this job
    sent, held or gave up on. Runs without RQ too, inside an app context.

    The chunks go through a pipeline: while a thread of its own hands one chunk to the servers,
    this thread records the chunk before and claims and prepares the next, so that the database
    work and the building of messages happen while the network waits, not after it.
    """
    from webapp.services.outbox import Senders, claim, joining, prepare, transmit

    # A job with room takes other due messages of its accounts (what waiting jobs carry). In id
    # order: the rate limits count, for each chunk, what was written before its first message.
    joined = joining(outbound_ids, utcnow(), BATCH - len(outbound_ids))
    ids = sorted({*outbound_ids, *joined})
    chunks = [ids[start : start + CHUNK] for start in range(0, len(ids), CHUNK)]
    results: list[Any] = []
    with (
        Senders() as senders,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbound-send") as wire,
    ):
        claimed = claim(chunks[0], utcnow()) if chunks else []
        db.session.commit()
        in_flight: _InFlight | None = None
        for following in [*chunks[1:], []]:
            with _uncertain_on_error(claimed, in_flight):
                outgoing, held = prepare(claimed, senders)
                results.extend(held)
                sending = (outgoing, wire.submit(transmit, outgoing)) if outgoing else None
                if in_flight is not None:
                    results.extend(_settle(in_flight))
            in_flight = sending
            # One commit records the chunk before and claims the next one, which is therefore
            # committed "sending" before any of it reaches a server.
            claimed = claim(following, utcnow())
            db.session.commit()
        if in_flight is not None:
            with _uncertain_on_error([], in_flight):
                results.extend(_settle(in_flight))
            db.session.commit()
    return results


_InFlight = tuple[Sequence["Outgoing"], "Future[list[Answer]]"]


def _settle(in_flight: _InFlight) -> list[Any]:
    """Wait for a chunk's answers and record them (the caller commits)."""
    from webapp.services.outbox import finish

    outgoing, answers = in_flight
    return finish(outgoing, answers.result())


@contextmanager
def _uncertain_on_error(claimed: Sequence[Claimed], in_flight: _InFlight | None) -> Iterator[None]:
    try:
        yield
    except Exception:
        # What was handed to a server is unknown: the claimed messages stay "sending" and
        # become "uncertain", never sent again unnoticed.
        db.session.rollback()
        ids = [c.id for c in claimed] + ([o.row.id for o in in_flight[0]] if in_flight else [])
        log.exception("sending outbound messages %s failed", ids)
        raise


@job
def dispatch_outbox() -> None:
    """Mark messages left "sending" as "uncertain" and enqueue the ones due to be sent.

    While send jobs are still waiting in the queue (workers busy or stopped) nothing more is
    enqueued: the waiting jobs run first, and the next sweep finds whatever they leave.
    """
    from webapp.services.outbox import due_ids, mark_uncertain

    now = utcnow()
    mark_uncertain(now)
    db.session.commit()
    try:
        waiting = get_queue(OUTBOUND).count
    except RedisError:
        return
    if waiting:
        log.info("outbox sweep: %d send jobs still waiting; nothing enqueued", waiting)
        return
    ids = due_ids(now)
    db.session.rollback()
    if ids:
        enqueue_send(ids)


# -- enqueue after commit --------------------------------------------------------------------


def _collect(session: Session, flush_context: object) -> None:
    ids = [
        obj.id
        for obj in session.new
        if isinstance(obj, OutboundMessage) and obj.status == OutboundStatus.PENDING.value
    ]
    if ids:
        session.info.setdefault(_PENDING_KEY, []).extend(ids)


def _after_commit(session: Session) -> None:
    ids = session.info.pop(_PENDING_KEY, None)
    if ids:
        enqueue_send(ids)


def _forget(session: Session, *args: object) -> None:
    session.info.pop(_PENDING_KEY, None)


def _after_soft_rollback(session: Session, previous_transaction: Any) -> None:
    # A savepoint rolled back leaves the outer transaction's rows; only the outermost counts.
    if previous_transaction.parent is None:
        _forget(session)


def install_send_after_commit(app: Flask) -> None:
    """Enqueue the sender for every outbound message a transaction writes, once it commits.

    The listeners sit on the shared session factory, so they are installed once per process.
    """
    hooks = (
        ("after_flush", _collect),
        ("after_commit", _after_commit),
        ("after_rollback", _forget),
        ("after_soft_rollback", _after_soft_rollback),
    )
    for name, listener in hooks:
        if not event.contains(db.session, name, listener):
            event.listen(db.session, name, listener)
