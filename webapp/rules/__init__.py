"""Service email rules: list, create, edit, delete, and the rule tester."""

from flask import Blueprint

bp = Blueprint("rules", __name__, url_prefix="/admin/rules")

from webapp.rules import views  # noqa: E402,F401
