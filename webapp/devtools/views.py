from __future__ import annotations

import smtplib
from datetime import date
from email.message import EmailMessage
from email.utils import getaddresses

from flask import Response, abort, current_app, flash, redirect, render_template, url_for

from webapp.devtools import bp
from webapp.forms.auth import ConfirmForm
from webapp.forms.devmail import ComposeForm, ReplyForm
from webapp.mail.compose import HeaderValueError, quote, reply_subject
from webapp.mail.correlate import TOKEN_HEADER
from webapp.mail.outbound import OutboundError, OutboundSpec, build_outbound
from webapp.mail.sandbox import Sandbox, SandboxMessage
from webapp.security import admin_required


def _sandbox() -> Sandbox:
    return Sandbox(current_app.config["CASEMAIL_DEV_MAILDIR"])


def _first_address(value: str) -> str:
    pairs = getaddresses([value])
    return pairs[0][1] if pairs and pairs[0][1] else ""


def _header(message: EmailMessage, name: str) -> str:
    try:
        return str(message.get(name) or "")
    except (ValueError, IndexError, TypeError):
        return ""


def is_approval_request(message: EmailMessage) -> bool:
    """Whether `message` asks its reader to decide: it carries a reply token."""
    reply_to = _first_address(_header(message, "Reply-To"))
    return bool(_header(message, TOKEN_HEADER)) or "+" in reply_to.partition("@")[0]


def _thread(message: EmailMessage) -> tuple[str | None, str | None]:
    """(In-Reply-To, References) of a reply to `message`, as a mail client sets them."""
    message_id = _header(message, "Message-ID").strip() or None
    references = _header(message, "References").split()
    if message_id and message_id not in references:
        references.append(message_id)
    return message_id, " ".join(references) or None


def _request_example() -> str:
    """The Send form's default body: an expense request the demo rule maps to fields."""
    return (
        "Hello,\n\nplease approve my train tickets to the customer.\n\n"
        "Amount: 120.50\n"
        f"Date: {date.today().isoformat()}\n"
        "Category: Travel\n"
        "Approver: manager@example.com\n"
    )


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
    form.subject.data = "Expense: train tickets"
    form.body.data = _request_example()
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
    # The reply comes from whom the message was for, and goes where it asks replies to go
    # (an approval request's Reply-To carries its reply token).
    form.from_address.data = _first_address(_header(original, "To")) or (
        found.entry.recipients[0] if found.entry.recipients else ""
    )
    form.to_address.data = _first_address(_header(original, "Reply-To")) or _first_address(
        _header(original, "From")
    )
    form.subject.data = reply_subject(found.entry.subject)
    approval = is_approval_request(original)
    sent, sender = _header(original, "Date"), _header(original, "From")
    attribution = f"On {sent}, {sender} wrote:" if sent else f"{sender} wrote:"
    quoted = f"{attribution}\n{quote(found.text)}"
    form.body.data = ("APPROVE\n\n" if approval else "\n\n") + quoted
    return render_template("devtools/message.html", found=found, form=form, approval=approval)


@bp.route("/mailbox/<key>/reply", methods=["POST"])
@admin_required
def reply(key: str):
    found = _message_or_404(key)
    form = ReplyForm()
    in_reply_to, references = _thread(found.message)
    if form.validate_on_submit() and _send(form, in_reply_to=in_reply_to, references=references):
        flash(f"Reply sent to {form.to_address.data}.", "success")
        return redirect(url_for("devtools.mailbox"))
    approval = is_approval_request(found.message)
    return render_template("devtools/message.html", found=found, form=form, approval=approval), 400


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
