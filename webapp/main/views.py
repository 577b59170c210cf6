from __future__ import annotations

from flask import current_app, jsonify, render_template
from flask_login import current_user
from sqlalchemy import func, select, text

from webapp.extensions import db, get_redis
from webapp.main import bp
from webapp.models import InboundMessage, User
from webapp.security import any_role


@bp.route("/")
@any_role
def index():
    counts: dict[str, int | None] = {}
    if current_user.has_role("worker"):
        from webapp.services.cases import QueueFilter, queue_count

        counts["my_work"] = queue_count(QueueFilter(mine_for=current_user))
        counts["open_cases"] = queue_count(QueueFilter(status="open"))
        counts["overdue"] = queue_count(QueueFilter(status="open", overdue=True))
    if current_user.has_role("designer"):
        from webapp.models import CaseType

        counts["case_types"] = db.session.scalar(select(func.count()).select_from(CaseType))
    if current_user.has_role("admin"):
        counts["users"] = db.session.scalar(select(func.count()).select_from(User))
        counts["inbound"] = db.session.scalar(select(func.count()).select_from(InboundMessage))
    return render_template(
        "main/index.html",
        counts=counts,
        sandbox=current_app.config["CASEMAIL_DEV_SANDBOX"],
    )


@bp.route("/healthz")
def healthz():
    """For load balancers and `make run`: 200 when the database and Redis answer."""
    checks = {}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        get_redis().ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return jsonify(status="ok" if healthy else "unhealthy", checks=checks), 200 if healthy else 503
