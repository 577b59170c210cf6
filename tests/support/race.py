"""Two transactions at once: one writes and stays open while the other starts."""

from __future__ import annotations

import threading
from collections.abc import Callable

from flask import Flask

from webapp.extensions import db


def while_another_writes(
    app: Flask, write: Callable[[], None], act: Callable[[], None], refusal: type[Exception]
) -> str:
    """Run `write` (which flushes what it writes) in a transaction of its own, left open,
    start `act` in another and commit `write` half a second later. "done" when `act`
    committed, else the message of the `refusal` it raised (its transaction rolled back)."""
    written, release, outcome = threading.Event(), threading.Event(), []

    def writer() -> None:
        with app.app_context():
            write()
            written.set()
            release.wait(10)
            db.session.commit()

    def actor() -> None:
        with app.app_context():
            try:
                act()
                db.session.commit()
                outcome.append("done")
            except refusal as exc:
                db.session.rollback()
                outcome.append(str(exc))

    writing = threading.Thread(target=writer)
    writing.start()
    assert written.wait(10)
    acting = threading.Thread(target=actor)
    acting.start()
    acting.join(0.5)
    alive = acting.is_alive()  # it must be waiting for the write, not done before it
    release.set()
    writing.join(10)
    acting.join(10)
    assert len(outcome) == 1, "the second transaction did not finish"
    assert alive, "the second transaction finished without waiting for the first"
    return outcome[0]
