"""The scheduler process: enqueues periodic jobs (`flask scheduler`).

One scheduler is enough for a whole installation; jobs it enqueues run on any worker. It stops
cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

from flask import Flask
from rq.cron import CronScheduler

from webapp.extensions import get_redis
from webapp.services.status import HEARTBEAT_SECONDS
from workers import inbound, jobs, listeners, outbound
from workers.queues import DEFAULT, OUTBOUND


def build_scheduler(app: Flask) -> CronScheduler:
    """A CronScheduler with every periodic job registered."""
    scheduler = CronScheduler(
        connection=get_redis(app), logging_level=app.config["CASEMAIL_LOG_LEVEL"]
    )
    scheduler.register(
        jobs.record_heartbeat, DEFAULT, interval=HEARTBEAT_SECONDS, job_timeout=30, ttl=60
    )
    scheduler.register(
        inbound.requeue_stuck, DEFAULT, interval=inbound.REQUEUE_SECONDS, job_timeout=120, ttl=600
    )
    scheduler.register(
        listeners.schedule_polls,
        DEFAULT,
        interval=listeners.SCHEDULE_SECONDS,
        job_timeout=60,
        ttl=listeners.SCHEDULE_SECONDS * 2,
    )
    scheduler.register(
        outbound.dispatch_outbox,
        OUTBOUND,
        interval=outbound.DISPATCH_SECONDS,
        job_timeout=60,
        ttl=outbound.DISPATCH_SECONDS * 2,
    )
    return scheduler


def run_scheduler(app: Flask) -> None:
    build_scheduler(app).start()
