"""What an operator needs to know about the running system."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flask import current_app
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.registry import FailedJobRegistry
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from webapp.extensions import db, get_redis

HEARTBEAT_KEY = "casemail:heartbeat"
# The scheduler enqueues a heartbeat every HEARTBEAT_SECONDS; a worker records it.
HEARTBEAT_SECONDS = 30


@dataclass
class QueueStatus:
    name: str
    queued: int
    failed: int


@dataclass
class WorkerStatus:
    name: str
    state: str
    queues: list[str]


@dataclass
class SystemStatus:
    database: str
    database_error: str | None
    redis_error: str | None
    queues: list[QueueStatus] = field(default_factory=list)
    workers: list[WorkerStatus] = field(default_factory=list)
    heartbeat_age: float | None = None
    # Outgoing messages that need an admin: held, uncertain, failed (by status).
    outbox_attention: dict[str, int] = field(default_factory=dict)

    @property
    def background_ok(self) -> bool:
        return self.heartbeat_age is not None and self.heartbeat_age < 3 * HEARTBEAT_SECONDS


def record_heartbeat() -> None:
    get_redis().set(HEARTBEAT_KEY, f"{time.time():.3f}", ex=24 * 3600)


def system_status() -> SystemStatus:
    """Database and Redis reachability, queues, workers and the last heartbeat."""
    from workers.queues import ALL_QUEUES

    engine_name = db.engine.dialect.name
    db_error = None
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        db_error = type(exc).__name__
    status = SystemStatus(database=engine_name, database_error=db_error, redis_error=None)
    if db_error is None:
        from webapp.services.outbox import ATTENTION, status_counts

        counts = status_counts()
        status.outbox_attention = {s.value: counts[s.value] for s in ATTENTION}
    redis = get_redis()
    try:
        for name in ALL_QUEUES:
            queue = Queue(name, connection=redis)
            failed = FailedJobRegistry(queue=queue).count
            status.queues.append(QueueStatus(name=name, queued=queue.count, failed=failed))
        for worker in Worker.all(connection=redis):
            status.workers.append(
                WorkerStatus(
                    name=worker.name, state=str(worker.get_state()), queues=worker.queue_names()
                )
            )
        beat = redis.get(HEARTBEAT_KEY)
        if beat is not None:
            status.heartbeat_age = max(0.0, time.time() - float(beat))
    except RedisError as exc:
        current_app.logger.warning("system status: Redis error %s", type(exc).__name__)
        status.redis_error = (
            f"{type(exc).__name__}: Redis at the configured REDIS_URL does not answer"
        )
    return status
