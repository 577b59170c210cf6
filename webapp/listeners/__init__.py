"""Email listeners (admin only): /admin/listeners."""

from flask import Blueprint

bp = Blueprint("listeners", __name__)

from webapp.listeners import views  # noqa: E402, F401  (registers the routes)
