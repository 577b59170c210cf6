"""Jobs the tests enqueue; importable by worker subprocesses started from the project root."""

from __future__ import annotations

import time

from webapp.extensions import get_redis
from workers.app import job


@job
def slow_mark(key: str, seconds: float) -> None:
    """Say it started, sleep, then mark `key` done: shows whether a job ran to its end."""
    redis = get_redis()
    redis.set(f"{key}:started", "1")
    time.sleep(seconds)
    redis.set(key, "done")
