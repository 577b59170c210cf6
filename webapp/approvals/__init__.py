"""The confirmation page of signed Approve / Reject links: no login, the link is the credential."""

from flask import Blueprint

bp = Blueprint("approvals", __name__, url_prefix="/approvals")

from webapp.approvals import views  # noqa: E402,F401
