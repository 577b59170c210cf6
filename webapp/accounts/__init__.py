"""Email accounts and keystores (admin only): /admin/accounts and /admin/keystores."""

from flask import Blueprint

bp = Blueprint("accounts", __name__)

from webapp.accounts import views  # noqa: E402, F401  (registers the routes)
