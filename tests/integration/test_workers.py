"""Background work: a real worker and scheduler against real Redis."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from rq import Queue

from tests.support.jobs import slow_mark
from webapp.extensions import get_redis
from webapp.services.status import HEARTBEAT_KEY
from workers import jobs
from workers.queues import ALL_QUEUES, DEFAULT
from workers.worker import run_worker

ROOT = Path(__file__).resolve().parents[2]


def _wait_for(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _run_until(command: list[str], env: dict[str, str], ready, what: str) -> str:
    """Start `command`, wait until `ready()`, send SIGTERM; returns its output after it exits 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(ready, what=what)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, output.decode()
    return output.decode()


def test_burst_worker_runs_a_heartbeat_and_the_admin_sees_it(app, client, login_as):
    login_as("admin")
    page = client.get("/admin/system").get_data(as_text=True)
    assert "No heartbeat" in page and "No worker is connected" in page
    Queue(DEFAULT, connection=get_redis(app)).enqueue(jobs.record_heartbeat)
    assert run_worker(app, ALL_QUEUES, burst=True) is True
    page = client.get("/admin/system").get_data(as_text=True)
    assert "Running" in page
    age = re.search(r"Last heartbeat (\d+) s ago\.", page)
    assert age is not None and int(age.group(1)) < 10
    for name in ALL_QUEUES:
        assert f"<td>{name}</td>" in page


def test_unknown_queue_name_is_refused(app):
    import pytest

    with pytest.raises(ValueError, match="unknown queue"):
        run_worker(app, ["nope"], burst=True)


def test_worker_finishes_its_job_on_sigterm_then_exits(app, app_env):
    redis = get_redis(app)
    Queue(DEFAULT, connection=redis).enqueue(slow_mark, "casemail:test:slow", 1.5)
    _run_until(
        ["flask", "worker"],
        app_env,
        lambda: redis.get("casemail:test:slow:started"),
        "the job to start",
    )
    assert redis.get("casemail:test:slow") == b"done"


def test_scheduler_enqueues_heartbeats_and_stops_on_sigterm(app, app_env):
    redis = get_redis(app)
    queue = Queue(DEFAULT, connection=redis)
    _run_until(
        ["flask", "scheduler"], app_env, lambda: queue.count >= 1, "a heartbeat job to be enqueued"
    )
    assert queue.jobs[0].func_name == "workers.jobs.record_heartbeat"
    assert redis.get(HEARTBEAT_KEY) is None  # enqueued, but no worker ran it yet
    run_worker(app, [DEFAULT], burst=True)
    assert redis.get(HEARTBEAT_KEY) is not None


def test_python_m_workers_is_the_same_worker(app, app_env):
    redis = get_redis(app)
    Queue(DEFAULT, connection=redis).enqueue(jobs.record_heartbeat)
    _run_until(["workers"], app_env, lambda: redis.get(HEARTBEAT_KEY) is not None, "the heartbeat")
