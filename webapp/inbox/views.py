"""Incoming mail pages: the list (quarantine first), one message, its .eml, and replay."""

from __future__ import annotations

from flask import Response, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import case, select

from webapp.extensions import db
from webapp.forms.auth import ConfirmForm
from webapp.inbox import bp
from webapp.mail.filters import screen
from webapp.mail.sanitize import sanitize_html
from webapp.models import Case, InboundMessage, InboundStatus
from webapp.security import admin_required
from webapp.services.ingest import IngestError, replay
from webapp.views import file_download, page_number

PER_PAGE = 50
STATUSES = [s.value for s in InboundStatus]
# Inline parts shown inside the sanitised HTML; SVG is left out because it can carry script.
SHOWN_IMAGES = frozenset(("image/png", "image/jpeg", "image/gif", "image/webp"))


def _message(inbound_id: int) -> InboundMessage:
    inbound = db.session.get(InboundMessage, inbound_id)
    if inbound is None:
        abort(404)
    return inbound


@bp.route("/")
@admin_required
def messages():
    status = request.args.get("status", "")
    stmt = select(InboundMessage)
    if status in STATUSES:
        stmt = stmt.where(InboundMessage.status == status)
    else:
        status = ""
    quarantine_first = case((InboundMessage.status == InboundStatus.QUARANTINED.value, 0), else_=1)
    page = db.paginate(
        stmt.order_by(quarantine_first, InboundMessage.id.desc()),
        page=page_number(),
        per_page=PER_PAGE,
        error_out=False,
    )
    case_ids = {m.case_id for m in page.items if m.case_id}
    references = dict(
        db.session.execute(select(Case.id, Case.reference).where(Case.id.in_(case_ids))).all()
    )
    return render_template(
        "inbox/index.html", page=page, status=status, statuses=STATUSES, references=references
    )


@bp.route("/<int:inbound_id>")
@admin_required
def message(inbound_id: int):
    inbound = _message(inbound_id)
    screened = screen(inbound.raw)
    parsed = screened.message
    body_html = ""
    images: dict[str, int] = {}
    if parsed is not None:
        for index, attachment in enumerate(parsed.attachments):
            if attachment.content_id and attachment.content_type in SHOWN_IMAGES:
                images[attachment.content_id.strip("<>")] = index
        if parsed.html:

            def cid_url(content_id: str) -> str | None:
                index = images.get(content_id.strip("<>"))
                if index is None:
                    return None
                return url_for("inbox.part", inbound_id=inbound.id, index=index)

            body_html = sanitize_html(parsed.html, cid_url=cid_url)
    linked = db.session.get(Case, inbound.case_id) if inbound.case_id else None
    return render_template(
        "inbox/show.html",
        inbound=inbound,
        parsed=parsed,
        body_html=body_html,
        case=linked,
        replay_form=ConfirmForm(formdata=None),
    )


@bp.route("/<int:inbound_id>/message.eml")
@admin_required
def download(inbound_id: int):
    inbound = _message(inbound_id)
    return Response(
        inbound.raw,
        mimetype="message/rfc822",
        headers={"Content-Disposition": f'attachment; filename="message-{inbound.id}.eml"'},
    )


@bp.route("/<int:inbound_id>/parts/<int:index>")
@admin_required
def part(inbound_id: int, index: int):
    parsed = screen(_message(inbound_id).raw).message
    if parsed is None or not 0 <= index < len(parsed.attachments):
        abort(404)
    attachment = parsed.attachments[index]
    if attachment.content_type in SHOWN_IMAGES:
        return Response(attachment.content, mimetype=attachment.content_type)
    return file_download(attachment.content, attachment.filename or f"part-{index}")


@bp.route("/<int:inbound_id>/replay", methods=["POST"])
@admin_required
def replay_message(inbound_id: int):
    _message(inbound_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        inbound = replay(inbound_id)
    except IngestError as exc:
        db.session.rollback()
        flash(str(exc), "danger")
        return redirect(url_for("inbox.message", inbound_id=inbound_id))
    db.session.commit()
    category = "warning" if inbound.status == InboundStatus.QUARANTINED.value else "success"
    flash(f"Replayed: {inbound.status}. {inbound.status_reason}", category)
    return redirect(url_for("inbox.message", inbound_id=inbound_id))
