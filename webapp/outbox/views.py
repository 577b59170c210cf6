"""Outbox pages: the list with counts per status, Send again and Cancel."""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from webapp.extensions import db
from webapp.forms.auth import ConfirmForm
from webapp.models import OutboundMessage, OutboundStatus
from webapp.models.types import utcnow
from webapp.outbox import bp
from webapp.security import admin_required
from webapp.services import outbox as service
from webapp.views import page_number

PER_PAGE = 50
STATUSES = [s.value for s in OutboundStatus]
ATTENTION = [s.value for s in service.ATTENTION]
RELEASABLE = [s.value for s in service.RELEASABLE]
CANCELLABLE = [s.value for s in service.CANCELLABLE]


@bp.route("/")
@admin_required
def messages():
    status = request.args.get("status", "")
    stmt = select(OutboundMessage).options(selectinload(OutboundMessage.case))
    if status in STATUSES:
        stmt = stmt.where(OutboundMessage.status == status)
    else:
        status = ""
    page = db.paginate(
        stmt.order_by(OutboundMessage.id.desc()),
        page=page_number(),
        per_page=PER_PAGE,
        error_out=False,
    )
    return render_template(
        "outbox/index.html",
        page=page,
        status=status,
        statuses=STATUSES,
        counts=service.status_counts(),
        attention=ATTENTION,
        releasable=RELEASABLE,
        cancellable=CANCELLABLE,
        form=ConfirmForm(formdata=None),
    )


def _back() -> str:
    status = request.args.get("status", "")
    return (
        url_for("outbox.messages", status=status)
        if status in STATUSES
        else url_for("outbox.messages")
    )


@bp.route("/<int:outbound_id>/send-again", methods=["POST"])
@admin_required
def send_again(outbound_id: int):
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        message = service.send_again(outbound_id, utcnow())
    except service.OutboxError as exc:
        db.session.rollback()
        flash(str(exc), "danger")
        return redirect(_back())
    db.session.commit()
    from workers.outbound import enqueue_send

    if enqueue_send([message.id]):
        flash(f"Message {message.id} is being sent again.", "success")
    else:
        flash(
            f"Message {message.id} will be sent again as soon as the background workers reach "
            "Redis.",
            "warning",
        )
    return redirect(_back())


@bp.route("/<int:outbound_id>/cancel", methods=["POST"])
@admin_required
def cancel(outbound_id: int):
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        message = service.cancel(outbound_id)
    except service.OutboxError as exc:
        db.session.rollback()
        flash(str(exc), "danger")
        return redirect(_back())
    db.session.commit()
    flash(f"Message {message.id} is cancelled and will not be sent.", "success")
    return redirect(_back())
