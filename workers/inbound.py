"""Jobs that ingest stored incoming messages, and the reconciler that finds forgotten ones.

One job takes a whole batch of ids: RQ costs several milliseconds per job, more than ingesting
an ordinary message, so a poll enqueues one job per batch. Each message still gets its own
transaction, so one bad message never holds back the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.exc import OperationalError

from webapp.extensions import db, get_queue
from workers.app import job
from workers.queues import INBOUND

log = logging.getLogger(__name__)

BATCH = 100
# A message still "received" this long after it was stored lost its job (a worker was killed,
# Redis was flushed, the enqueue after the commit failed).
STUCK_AFTER = timedelta(minutes=5)
REQUEUE_SECONDS = 300


def enqueue_ingest(inbound_ids: Sequence[int]) -> None:
    """Enqueue ingest jobs for stored (committed) messages, in batches."""
    queue = get_queue(INBOUND)
    ids = list(inbound_ids)
    for start in range(0, len(ids), BATCH):
        queue.enqueue(ingest_messages, ids[start : start + BATCH], job_timeout=600)


@job
def ingest_messages(inbound_ids: list[int]) -> None:
    """Ingest each message in its own transaction."""
    from webapp.services.ingest import (
        IngestError,
        Tally,
        count_outcomes,
        ingest_message,
        quarantine_failed,
    )

    # The listener's counters are one row every worker writes: updating it per message costs
    # a statement and a wait on that row in every transaction, so a batch adds its outcomes
    # once at the end (a worker killed mid-batch leaves its messages uncounted, nothing else).
    tally = Tally()
    try:
        for inbound_id in inbound_ids:
            try:
                outcome = Tally()
                ingest_message(inbound_id, outcome)
                db.session.commit()
                tally.update(outcome)  # only what was committed
            except IngestError as exc:
                # Rolled back already; the message stays "received" for the reconciler.
                log.warning("inbound message %s: %s", inbound_id, exc)
            except OperationalError:
                # The database is unavailable: the message stays "received" for the reconciler.
                db.session.rollback()
                log.exception("ingest of inbound message %s failed; it will be retried", inbound_id)
            except Exception as exc:
                db.session.rollback()
                log.exception("ingest of inbound message %s failed; quarantined", inbound_id)
                quarantine_failed(inbound_id, exc)
                db.session.commit()
    finally:
        if tally:
            count_outcomes(tally)
            db.session.commit()


@job
def requeue_stuck() -> None:
    """Enqueue ingest again for messages left in "received" longer than STUCK_AFTER."""
    from webapp.services.ingest import stuck_message_ids

    ids = stuck_message_ids(STUCK_AFTER)
    db.session.rollback()
    if ids:
        log.warning("re-enqueuing %d incoming messages stuck in received", len(ids))
        enqueue_ingest(ids)
