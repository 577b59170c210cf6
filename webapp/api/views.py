from __future__ import annotations

from flask import g, jsonify

from webapp.api import bp
from webapp.security import api_token_required


@bp.route("/me")
@api_token_required
def me():
    """The user the token belongs to."""
    user = g.api_user
    return jsonify(id=user.id, email=user.email, name=user.name, role=user.role)
