"""Turns to write to an SQLite database, for the processes that write mail in bulk.

SQLite lets one transaction write at a time, and a transaction that finds the database taken
sleeps and tries again, up to 100 ms between tries. The listener's poll and the ingest workers
instead take turns through a lock on a file beside the database (`<database>.ingest-turn`),
which the system hands to the next one the moment the last one releases it, so that a worker
or a poll writes as soon as the one before has committed. Other databases need no turns.

Take the turn before the transaction's first write, never while holding SQLite's write lock:
then no one waits for the turn while holding what its holder waits for.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select, update

from webapp.extensions import db


@contextmanager
def write_turn() -> Iterator[Callable[[], None]]:
    """A function that waits for this process's turn to write to an SQLite database, and the
    turn until the block ends; on other databases it does nothing."""
    path = turn_file()
    if path is None:
        yield lambda: None
        return
    with open(path, "a") as handle:  # closing it releases the lock, whatever happened

        def take() -> None:
            fcntl.flock(handle, fcntl.LOCK_EX)

        yield take


def turn_file() -> str | None:
    """The lock file of the app's SQLite database; None for other databases."""
    url = db.engine.url
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:") or url.query.get("uri"):
        return None  # a URI names the file in its own way; SQLite's own waiting applies
    return f"{database}.ingest-turn"


def hold_row(model: Any, row_id: int) -> None:
    """Wait for, then hold until the transaction ends, the right to change the row `row_id` of
    `model`, as a writer of it would: PostgreSQL locks the row FOR UPDATE, which also waits for
    a transaction that is adding rows that refer to it; SQLite takes its one write lock, which
    waits for any other writer. What the transaction reads next includes what they committed.
    """
    key = model.id
    if db.session.get_bind().dialect.name == "sqlite":
        db.session.execute(
            update(model)
            .where(key == row_id)
            .values({key: key})
            .execution_options(synchronize_session=False)
        )
    else:
        db.session.execute(select(key).where(key == row_id).with_for_update())
