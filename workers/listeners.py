"""Polling listeners: one poll per listener at a time, across every worker and machine."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from flask import Flask
from redis.exceptions import LockError, RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from sqlalchemy import select

from webapp.mail.connect import ConnectivityError
from workers.app import job
from workers.queues import INBOUND

if TYPE_CHECKING:
    from redis import Redis

    from webapp.services.receiving import PollResult

log = logging.getLogger(__name__)

# A poll holding the lock longer than this is taken as dead (its worker was killed) and the
# next poll may start. Long enough for a large first poll; short enough to recover.
LOCK_SECONDS = 15 * 60
# How often the scheduler looks for listeners that are due.
SCHEDULE_SECONDS = 10


class PollBusy(Exception):
    """Another poll of the same listener is running."""


class UnknownListener(LookupError):
    """There is no listener with the ID asked for (deleted since its poll was enqueued)."""


def _lock_name(listener_id: int) -> str:
    return f"casemail:listener-poll:{listener_id}"


def poll_job_id(listener_id: int) -> str:
    return f"poll-listener-{listener_id}"


def rest_job_id(listener_id: int) -> str:
    """The job that goes on with a poll that stopped at its time limit ("Poll now"): an id of
    its own, since a scheduled poll that found the lock taken may still show as running."""
    return f"poll-listener-{listener_id}-rest"


@contextmanager
def listener_lock(listener_id: int) -> Iterator[None]:
    """Hold the listener's poll lock (Redis SET NX PX with a token); raises PollBusy."""
    from webapp.extensions import get_redis

    # redis-py's Lock releases only with its own token (a compare-and-delete script), so a
    # poll that outlived LOCK_SECONDS cannot free the lock of the poll that followed it.
    lock = get_redis().lock(_lock_name(listener_id), timeout=LOCK_SECONDS, blocking=False)
    if not lock.acquire():
        raise PollBusy(f"listener {listener_id} is being polled already")
    try:
        yield
    finally:
        try:
            lock.release()
        except LockError:
            # The poll outlived LOCK_SECONDS and another may have started: its lock stays.
            log.warning("poll of listener %s held its lock past %s s", listener_id, LOCK_SECONDS)


def run_poll(listener_id: int, until: float | None = None) -> PollResult:
    """Poll one listener now, under its lock; returns its PollResult. With `until` (a
    `time.monotonic()` value) no batch is started after it but the first (`poll`).

    Raises PollBusy when another poll runs, UnknownListener for an unknown listener, and
    ReceivingError when the listener's account cannot be polled.
    """
    from webapp.extensions import db
    from webapp.models import EmailListener
    from webapp.services.receiving import poll

    with listener_lock(listener_id):
        listener = db.session.get(EmailListener, listener_id)
        if listener is None:
            raise UnknownListener(f"There is no listener with the ID {listener_id}.")
        return poll(listener, until=until)


@job
def poll_listener(listener_id: int) -> str:
    """Poll one listener; a poll already running for it makes this one a no-op."""
    try:
        result = run_poll(listener_id)
    except PollBusy:
        return "skipped: a poll of this listener is running"
    except UnknownListener as exc:
        return str(exc)
    log.info("listener %s: %s", listener_id, result.summary())
    return result.summary()


def _queued_or_running(connection: Redis, job_id: str) -> bool:
    try:
        status = Job.fetch(job_id, connection=connection).get_status()
    except NoSuchJobError:
        return False
    return status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED)


@job
def schedule_polls() -> int:
    """Enqueue a poll of every enabled listener that is due; returns how many were enqueued."""
    from webapp.extensions import db, get_queue, get_redis
    from webapp.models import EmailListener
    from webapp.models.types import utcnow

    now = utcnow()
    connection = get_redis()
    queue = get_queue(INBOUND)
    enqueued = 0
    for listener in db.session.scalars(select(EmailListener).where(EmailListener.enabled)):
        due = listener.last_poll_at is None or now - listener.last_poll_at >= timedelta(
            seconds=listener.poll_interval_seconds
        )
        # The fixed job id keeps one waiting poll per listener however long polls take; the
        # lock in run_poll is what keeps two from running at once.
        job_id = poll_job_id(listener.id)
        if due and not _queued_or_running(connection, job_id):
            queue.enqueue(
                poll_listener, listener.id, job_id=job_id, job_timeout=LOCK_SECONDS, result_ttl=60
            )
            enqueued += 1
    return enqueued


# -- IMAP IDLE ----------------------------------------------------------------------------------

# RFC 2177: a client re-issues IDLE at least every 29 minutes, or the server may drop it.
IDLE_RESTART_SECONDS = 25 * 60
# How long one wait for the server lasts, so that a stop request is noticed soon.
IDLE_CHECK_SECONDS = 1.0
IDLE_RETRY_SECONDS = 30.0


def enqueue_poll(listener_id: int, job_id: str | None = None) -> None:
    """Enqueue a poll of the listener now, unless one with the same job id (`poll_job_id` by
    default) is already waiting or running."""
    from webapp.extensions import get_queue, get_redis

    job_id = job_id or poll_job_id(listener_id)
    if not _queued_or_running(get_redis(), job_id):
        get_queue(INBOUND).enqueue(
            poll_listener, listener_id, job_id=job_id, job_timeout=LOCK_SECONDS, result_ttl=60
        )


class IdleWatcher(threading.Thread):
    """Keeps an IMAP IDLE connection on one listener's folder and calls `on_new` when mail
    arrives (and once at start). Polls stay scheduled too: IDLE only makes them come sooner."""

    def __init__(
        self,
        app: Flask,
        listener_id: int,
        stop: threading.Event,
        on_new: Callable[[int], None] = enqueue_poll,
    ) -> None:
        super().__init__(name=f"idle-listener-{listener_id}", daemon=True)
        self.app = app
        self.listener_id = listener_id
        self.stop = stop
        self.on_new = on_new
        self.last_error = ""

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._watch()
            except ConnectivityError as exc:
                self.last_error = str(exc)
                log.warning("IDLE on listener %s: %s", self.listener_id, exc)
                self.stop.wait(IDLE_RETRY_SECONDS)

    def _watch(self) -> None:
        from webapp.extensions import db
        from webapp.models import EmailListener
        from webapp.services.receiving import idle_connection

        with self.app.app_context():
            listener = db.session.get(EmailListener, self.listener_id)
            if listener is None or not listener.enabled:
                self.stop.set()
                return
            with idle_connection(listener) as client:
                # Nothing more to read while idling: no database connection held for minutes.
                db.session.remove()
                self._notify()
                while not self.stop.is_set():
                    if self._wait_for_mail(client):
                        self._notify()

    def _wait_for_mail(self, client: Any) -> bool:
        """IDLE until new mail, a stop request or the restart interval; True on new mail."""
        client.idle()
        started = time.monotonic()
        arrived = False
        try:
            while not (arrived or self.stop.is_set()):
                if time.monotonic() - started > IDLE_RESTART_SECONDS:
                    break
                responses = client.idle_check(timeout=IDLE_CHECK_SECONDS)
                arrived = any(len(r) > 1 and r[1] == b"EXISTS" for r in responses)
        finally:
            client.idle_done()
        return arrived

    def _notify(self) -> None:
        with self.app.app_context():
            try:
                self.on_new(self.listener_id)
            except RedisError as exc:
                log.warning("IDLE on listener %s: cannot enqueue a poll: %s", self.listener_id, exc)


def idle_listener_ids() -> list[int]:
    """Enabled IMAP listeners that want IDLE."""
    from webapp.extensions import db
    from webapp.models import EmailAccount, EmailListener

    return list(
        db.session.scalars(
            select(EmailListener.id)
            .join(EmailAccount, EmailListener.account_id == EmailAccount.id)
            .where(
                EmailListener.enabled,
                EmailListener.use_idle,
                EmailAccount.receiver_protocol == "imap",
            )
        )
    )


def run_idle_watchers(app: Flask, stop: threading.Event, rescan_seconds: float = 60.0) -> None:
    """Keep one IdleWatcher per IDLE listener until `stop` is set, looking for new ones (and
    restarting ended ones) every `rescan_seconds`."""
    watchers: dict[int, IdleWatcher] = {}
    while not stop.is_set():
        with app.app_context():
            ids = idle_listener_ids()
        for listener_id in ids:
            if listener_id not in watchers or not watchers[listener_id].is_alive():
                watchers[listener_id] = IdleWatcher(app, listener_id, threading.Event())
                watchers[listener_id].start()
        stop.wait(rescan_seconds)
    for watcher in watchers.values():
        watcher.stop.set()
    for watcher in watchers.values():
        watcher.join(timeout=IDLE_CHECK_SECONDS * 5)
