"""WSGI entry point: `gunicorn wsgi:app` or `flask --app wsgi run`."""

from webapp import create_app
from webapp.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    # A setting is missing or malformed: say which, without a traceback, and do not start.
    raise SystemExit(f"Casemail cannot start: {exc}") from None
