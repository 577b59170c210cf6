"""The one app a worker process uses, created once and shared by every job it runs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, has_app_context

F = TypeVar("F", bound=Callable[..., Any])

_app: Flask | None = None


def set_worker_app(app: Flask) -> None:
    global _app
    _app = app


def worker_app() -> Flask:
    """The worker's app; created on first use in a process that did not set one."""
    global _app
    if _app is None:
        from webapp import create_app

        _app = create_app()
    return _app


def job(func: F) -> F:
    """Run a job inside the worker's app context and release its database session after."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if has_app_context():
            return func(*args, **kwargs)
        from webapp.extensions import db

        with worker_app().app_context():
            try:
                return func(*args, **kwargs)
            finally:
                db.session.remove()

    return wrapper  # type: ignore[return-value]
