from __future__ import annotations

import smtplib
from email.utils import getaddresses

from flask import Response, abort, current_app, flash, redirect, render_template, url_for

from webapp.devtools import bp
from webapp.forms.auth import ConfirmForm
from webapp.forms.devmail import ComposeForm, ReplyForm
from webapp.mail.compose import HeaderValueError, quote, reply_subject
from webapp.mail.outbound import OutboundError, OutboundSpec, build_outbound
from webapp.mail.sandbox import Sandbox, SandboxMessage
from webapp.security import admin_required


def _sandbox() -> Sandbox:
    return Sandbox(current_app.config["CASEMAIL_DEV_MAILDIR"])


def _first_address(value: str) -> str:
    pairs = getaddresses([value])
    return pairs[0][1] if pairs and pairs[0][1] else ""


def _send(form: ReplyForm, in_reply_to: str | None = None, references: str | None = None) -> bool:
    """Send through the sandbox's SMTP server, the way a mail client would."""
    config = current_app.config
    try:
        message = build_outbound(
            OutboundSpec(
                from_address=form.from_address.data,
                to=(form.to_address.data,),
                subject=form.subject.data,
                text=form.body.data or "",
                message_id_domain="sandbox.casemail.test",
                in_reply_to=in_reply_to,
                references=tuple(references.split()) if references else (),
            )
        )
    except (HeaderValueError, OutboundError) as exc:
        form.subject.errors.append(str(exc))
        return False
    host, port = config["CASEMAIL_DEV_SMTP_HOST"], config["CASEMAIL_DEV_SMTP_PORT"]
    try:
        with smtplib.SMTP(host, port, timeout=10) as smtp:
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        flash(
            f"The mail sandbox at {host}:{port} did not take the message ({exc}). "
            "Is it running? Start it with `flask devmail` (make run starts it for you).",
            "danger",
        )
        return False
    return True


@bp.route("/mailbox")
@admin_required
def mailbox():
    sandbox = _sandbox()
    form = ComposeForm(formdata=None)
    intake = current_app.config["CASEMAIL_DEV_INTAKE"]
    form.to_address.data = intake[0] if intake else ""
    form.from_address.data = "requester@example.com"
    return _render_list(sandbox, form)


def _render_list(sandbox: Sandbox, form: ComposeForm):
    return render_template(
        "devtools/mailbox.html",
        entries=sandbox.entries(),
        total=sandbox.count(),
        form=form,
        confirm_form=ConfirmForm(),
        intake=current_app.config["CASEMAIL_DEV_INTAKE"],
        smtp=(
            current_app.config["CASEMAIL_DEV_SMTP_HOST"],
            current_app.config["CASEMAIL_DEV_SMTP_PORT"],
        ),
    )


@bp.route("/mailbox/send", methods=["POST"])
@admin_required
def send():
    form = ComposeForm()
    if form.validate_on_submit() and _send(form):
        flash(f"Sent to {form.to_address.data}.", "success")
        return redirect(url_for("devtools.mailbox"))
    return _render_list(_sandbox(), form), 400


def _message_or_404(key: str) -> SandboxMessage:
    message = _sandbox().get(key)
    if message is None:
        abort(404)
    return message


@bp.route("/mailbox/<key>")
@admin_required
def message(key: str):
    found = _message_or_404(key)
    form = ReplyForm(formdata=None)
    original = found.message
    form.from_address.data = found.entry.recipients[0] if found.entry.recipients else ""
    form.to_address.data = _first_address(str(original.get("Reply-To") or "")) or _first_address(
        str(original.get("From") or "")
    )
    form.subject.data = reply_subject(found.entry.subject)
    form.body.data = "\n\n" + quote(found.text)
    return render_template("devtools/message.html", found=found, form=form)


@bp.route("/mailbox/<key>/reply", methods=["POST"])
@admin_required
def reply(key: str):
    found = _message_or_404(key)
    form = ReplyForm()
    original = found.message
    if form.validate_on_submit() and _send(
        form,
        in_reply_to=str(original.get("Message-ID") or "") or None,
        references=str(original.get("References") or "") or None,
    ):
        flash(f"Reply sent to {form.to_address.data}.", "success")
        return redirect(url_for("devtools.mailbox"))
    return render_template("devtools/message.html", found=found, form=form), 400


@bp.route("/mailbox/<key>/raw")
@admin_required
def raw(key: str):
    found = _message_or_404(key)
    return Response(
        found.raw,
        mimetype="message/rfc822",
        headers={"Content-Disposition": f'attachment; filename="{key.split(".")[0]}.eml"'},
    )


@bp.route("/mailbox/clear", methods=["POST"])
@admin_required
def clear():
    if not ConfirmForm().validate_on_submit():
        abort(400)
    _sandbox().clear()
    flash("The sandbox is empty.", "success")
    return redirect(url_for("devtools.mailbox"))
