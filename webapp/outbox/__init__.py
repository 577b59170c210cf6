"""The outbox for admins: every outgoing message, its status and the server's answer."""

from flask import Blueprint

bp = Blueprint("outbox", __name__, url_prefix="/admin/outbox")

from webapp.outbox import views  # noqa: E402,F401
