"""Jobs that ingest stored incoming messages, and the reconciler that finds forgotten ones.

One job takes a whole batch of ids and ingests it in one transaction: RQ costs several
milliseconds per job and a commit about two, both more than ingesting an ordinary message, so
a poll enqueues one job per batch and the job commits once (`services.ingest.ingest_batch`:
the batch is claimed in one statement, each message runs in a savepoint so that one bad
message never holds back the others).

Nothing is lost: a message is "received" until the transaction that ingests it commits. A
worker killed mid-batch commits nothing of the batch; its messages stay "received" and the
reconciler (`requeue_stuck`) enqueues them again after STUCK_AFTER. Nothing is done twice: the
claim only takes messages still "received", in the same transaction as their cases.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from datetime import timedelta

from rq import Worker
from sqlalchemy.exc import OperationalError

from webapp.extensions import db, get_queue
from webapp.services.turns import write_turn
from workers.app import job
from workers.queues import INBOUND

log = logging.getLogger(__name__)

# The most ids one ingest job takes. A job's fixed cost (RQ's bookkeeping, the claim, the shared
# reads, the commit) is some 10 ms, more than ingesting a message: the fewer jobs, the less of
# it a message pays.
BATCH = 100
# With several workers, what is enqueued together is shared out among them in jobs of at least
# this many ids, so that each has its part of a poll's batch.
MIN_SHARE = 25
# A message whose case changed while it was being ingested is tried again at once, in a new
# transaction, up to this many times in all; after that it waits for the reconciler.
ATTEMPTS = 3
# A message still "received" this long after it was stored lost its job (a worker was killed,
# Redis was flushed, the enqueue after the commit failed).
STUCK_AFTER = timedelta(minutes=5)
REQUEUE_SECONDS = 300
# Whether this process has frozen its startup objects (`_freeze_startup_objects`).
_startup_frozen = False


def enqueue_ingest(inbound_ids: Sequence[int]) -> None:
    """Enqueue ingest jobs for stored (committed) messages, in batches (`job_sizes`)."""
    queue = get_queue(INBOUND)
    ids = list(inbound_ids)
    # Below two shares it is one job whoever listens: no need to ask.
    workers = Worker.count(queue=queue) if len(ids) >= 2 * MIN_SHARE else 1
    start = 0
    for size in job_sizes(len(ids), workers):
        queue.enqueue(ingest_messages, ids[start : start + size], job_timeout=600)
        start += size


def job_sizes(count: int, workers: int) -> list[int]:
    """How many ids each job of `count` takes: at most BATCH, in as few jobs as that allows;
    with several `workers` (the ones listening on the queue, on any machine), in as many jobs
    as there are workers or a multiple of it, so that they share the work evenly, as long as
    no job gets fewer than MIN_SHARE."""
    if count <= 0:
        return []
    jobs = -(-count // BATCH)
    if workers > 1:
        even = -(-jobs // workers) * workers
        jobs = max(jobs, min(even, count // MIN_SHARE))
    size, rest = divmod(count, jobs)
    return [size + 1] * rest + [size] * (jobs - rest)


@job
def ingest_messages(inbound_ids: list[int]) -> None:
    """Ingest a batch of messages in one transaction; retry those whose case changed meanwhile."""
    from webapp.services.ingest import ingest_batch

    _freeze_startup_objects()
    pending = list(inbound_ids)
    for attempt in range(1, ATTEMPTS + 1):
        with write_turn() as take_turn:
            try:
                retry = ingest_batch(pending, before_claim=take_turn)
                db.session.commit()
            except OperationalError:
                # The database is unavailable or gave up on a lock: nothing of this batch was
                # kept and its messages stay "received" for the next attempt or the reconciler.
                db.session.rollback()
                log.exception("ingest of a batch of %d messages failed", len(pending))
                retry = pending
        if not retry:
            return
        pending = retry
        if attempt < ATTEMPTS:
            time.sleep(0.05 * attempt)
    log.warning("%d incoming messages left for the reconciler: %s", len(pending), pending)


def _freeze_startup_objects() -> None:
    """Leave what the worker built before its first batch (the app, its mappers and caches:
    some 180,000 objects that live as long as the process) out of the cyclic
    garbage collector's full passes, which otherwise walk them all every few hundred
    messages, a fifth of a millisecond a message. Objects freed by reference counting are
    freed as before."""
    global _startup_frozen
    if not _startup_frozen:
        gc.freeze()
        _startup_frozen = True


@job
def requeue_stuck(older_than: timedelta = STUCK_AFTER) -> None:
    """Enqueue ingest again for messages left in "received" longer than `older_than`."""
    from webapp.services.ingest import stuck_message_ids

    ids = stuck_message_ids(older_than)
    db.session.rollback()
    if ids:
        log.warning("re-enqueuing %d incoming messages stuck in received", len(ids))
        enqueue_ingest(ids)
