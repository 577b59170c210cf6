"""WSGI entry point: `gunicorn wsgi:app` or `flask --app wsgi run`."""

import sys

from webapp import create_app
from webapp.config import ConfigError

# A setting is missing or malformed: say which in one sentence and stop. Exit status 3 is what
# gunicorn takes for a worker that cannot boot: it stops instead of starting workers again.
BOOT_ERROR = 3

try:
    app = create_app()
except ConfigError as exc:
    print(f"Casemail cannot start: {exc}", file=sys.stderr)
    raise SystemExit(BOOT_ERROR) from None
