"""Administration: users, work-queue groups and system status."""

from flask import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/admin")

from webapp.admin import groups, views  # noqa: E402,F401
