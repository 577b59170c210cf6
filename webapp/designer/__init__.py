"""The case type designer: fields, stages, the stage diagram, publishing versions."""

from flask import Blueprint

bp = Blueprint("designer", __name__, url_prefix="/case-types")

from webapp.designer import from_email, sending, views  # noqa: E402,F401
