"""Email channels: list, create, edit, delete, and their ordered routes."""

from flask import Blueprint

bp = Blueprint("channels", __name__, url_prefix="/admin/channels")

from webapp.channels import views  # noqa: E402,F401
