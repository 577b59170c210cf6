"""The worker process: `flask worker` or `python -m workers`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flask import Flask
from rq import Queue, SimpleWorker, Worker

from webapp.extensions import get_redis
from workers.app import set_worker_app
from workers.queues import ALL_QUEUES

log = logging.getLogger(__name__)

# A forking worker pays ~8 ms per job for the fork; mail jobs are short and numerous, so the
# default is the in-process SimpleWorker. `--fork` isolates each job in a child process instead.
WORKER_CLASSES: dict[str, type[Worker] | type[SimpleWorker]] = {
    "simple": SimpleWorker,
    "fork": Worker,
}


def run_worker(
    app: Flask,
    queues: Sequence[str] = ALL_QUEUES,
    *,
    burst: bool = False,
    kind: str = "simple",
    name: str | None = None,
) -> bool:
    """Work the queues until SIGTERM/SIGINT (the current job finishes first) or, in burst
    mode, until they are empty. Returns whether any job was run."""
    unknown = [q for q in queues if q not in ALL_QUEUES]
    if unknown:
        raise ValueError(f"unknown queue(s) {', '.join(unknown)}; known: {', '.join(ALL_QUEUES)}")
    if kind == "fork":
        # Each job's process ends with it: a connection kept for the next job would be lost.
        app.config["CASEMAIL_SMTP_KEEP_SECONDS"] = 0
    set_worker_app(app)
    connection = get_redis(app)
    worker_class = WORKER_CLASSES[kind]
    worker = worker_class(
        [Queue(q, connection=connection) for q in queues], connection=connection, name=name
    )
    with app.app_context():
        return worker.work(burst=burst, logging_level=app.config["CASEMAIL_LOG_LEVEL"])
