"""The JSON API under /api/v1/, authenticated by per-user bearer tokens."""

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")

from webapp.api import cases, intake, views  # noqa: E402,F401
