"""Jobs of general use. Arguments are ids and plain values, never objects."""

from __future__ import annotations

from workers.app import job


@job
def record_heartbeat() -> None:
    """Shows the admin that the scheduler, Redis and at least one worker are alive."""
    from webapp.services.status import record_heartbeat as record

    record()
