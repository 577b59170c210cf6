"""Development-only pages: the mail sandbox at /dev/mailbox."""

from flask import Blueprint

bp = Blueprint("devtools", __name__, url_prefix="/dev")

from webapp.devtools import views  # noqa: E402,F401
