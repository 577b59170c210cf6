"""Incoming mail: every stored message, its outcome and reasons, quarantine and replay."""

from flask import Blueprint

bp = Blueprint("inbox", __name__, url_prefix="/admin/inbox")

from webapp.inbox import views  # noqa: E402,F401
