"""Rule pages. The tester runs the same plan as ingesting, without writing anything."""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, url_for
from sqlalchemy import select

from webapp.extensions import db
from webapp.forms.auth import ConfirmForm
from webapp.forms.rules import RuleForm, RuleTestForm
from webapp.ids import id_in
from webapp.mail.filters import Limits
from webapp.models import EmailChannel, EmailListener, ServiceEmailRule
from webapp.rules import bp
from webapp.security import admin_required
from webapp.services import channels as channel_service
from webapp.services import ingest
from webapp.services import rules as service
from webapp.views import delete_and_redirect

MAX_TEST_BYTES = 25 * 1024 * 1024


def _rule(rule_id: int) -> ServiceEmailRule:
    rule = db.session.get(ServiceEmailRule, rule_id)
    if rule is None:
        abort(404)
    return rule


def _form(rule: ServiceEmailRule | None) -> RuleForm:
    data = None
    if rule is not None:
        data = {
            "name": rule.name,
            "action": rule.action,
            "case_type_id": str(rule.case_type_id or ""),
            "mappings": service.mapping_lines(rule.field_mappings or []),
            "stage_action": rule.stage_action,
            "resolved_policy": rule.resolved_policy,
            "send_ack": rule.send_ack,
            "ack_subject": rule.ack_subject,
            "ack_body": rule.ack_body,
            "max_attachments": rule.max_attachments,
            "max_attachment_bytes": rule.max_attachment_bytes,
        }
    form = RuleForm(data=data)
    form.set_case_types(service.published_case_types())
    return form


def _save(form: RuleForm, rule: ServiceEmailRule | None) -> ServiceEmailRule | None:
    """Save the form's rule, or put the refusal beside its field and return None."""
    try:
        mappings = service.parse_mapping_lines(form.mappings.data or "")
        type_id = form.case_type_id.data or ""
        data = service.RuleData(
            name=form.name.data or "",
            action=form.action.data or "",
            case_type_id=id_in(type_id),
            mappings=mappings,
            stage_action=form.stage_action.data or "",
            resolved_policy=form.resolved_policy.data or "",
            send_ack=bool(form.send_ack.data),
            ack_subject=form.ack_subject.data or "",
            ack_body=form.ack_body.data or "",
            max_attachments=form.max_attachments.data or 0,
            max_attachment_bytes=form.max_attachment_bytes.data or 0,
        )
        return service.save_rule(rule, data)
    except service.RuleError as exc:
        db.session.rollback()
        placed = False
        for name, text in exc.field_errors.items():
            field = getattr(form, name, None)
            if field is not None:
                field.errors = [*field.errors, text]
                placed = True
        if not placed:
            form.name.errors = [*form.name.errors, str(exc)]
        return None


@bp.route("/")
@admin_required
def rules():
    listeners: dict[int, list[str]] = {}
    for listener in db.session.scalars(
        select(EmailListener).where(EmailListener.rule_id.is_not(None))
    ):
        listeners.setdefault(listener.rule_id or 0, []).append(listener.name)
    rules = service.all_rules()
    stale = {rule.id: names for rule in rules if (names := service.stale_mappings(rule))}
    channels = service.channels_using()
    return render_template(
        "rules/index.html", rules=rules, listeners=listeners, channels=channels, stale=stale
    )


@bp.route("/new", methods=["GET", "POST"])
@admin_required
def new_rule():
    form = _form(None)
    if form.validate_on_submit():
        rule = _save(form, None)
        if rule is not None:
            db.session.commit()
            flash(f"Created the rule {rule.name}.", "success")
            return redirect(url_for("rules.rules"))
    status = 400 if form.is_submitted() else 200
    return render_template("rules/form.html", form=form, rule=None), status


@bp.route("/<int:rule_id>", methods=["GET", "POST"])
@admin_required
def edit_rule(rule_id: int):
    rule = _rule(rule_id)
    form = _form(rule)
    if form.validate_on_submit():
        saved = _save(form, rule)
        if saved is not None:
            db.session.commit()
            flash(f"Saved the rule {saved.name}.", "success")
            return redirect(url_for("rules.rules"))
    status = 400 if form.is_submitted() else 200
    return render_template(
        "rules/form.html", form=form, rule=rule, delete_form=ConfirmForm(formdata=None)
    ), status


@bp.route("/<int:rule_id>/delete", methods=["POST"])
@admin_required
def delete_rule(rule_id: int):
    rule = _rule(rule_id)
    return delete_and_redirect(
        lambda: service.delete_rule(rule),
        refused=service.RuleError,
        done=f"Deleted the rule {rule.name}.",
        back=url_for("rules.edit_rule", rule_id=rule_id),
        home=url_for("rules.rules"),
    )


@bp.route("/test", methods=["GET", "POST"])
@admin_required
def tester():
    form = RuleTestForm()
    all_rules = service.all_rules()
    channels = channel_service.all_channels()
    form.set_rules(all_rules, channels)
    if not form.is_submitted() and all_rules:
        form.rule_id.data = str(all_rules[0].id)
    result = None
    if form.validate_on_submit():
        raw = form.message.data.read(MAX_TEST_BYTES + 1)
        too_large = len(raw) > MAX_TEST_BYTES
        rule = db.session.get(ServiceEmailRule, int(form.rule_id.data or 0))
        channel = db.session.get(EmailChannel, int(form.channel_id.data or 0))
        limits = Limits(max_size=MAX_TEST_BYTES)
        if too_large:
            # Only the first MAX_TEST_BYTES were read: its size is not known, only that it is
            # larger (a listener with this limit would quarantine it).
            form.message.errors = [
                f"The file is larger than {MAX_TEST_BYTES // (1024 * 1024)} MB, the most the "
                "tester reads."
            ]
        elif not raw.strip():
            form.message.errors = ["The file is empty."]
        elif channel is not None:
            result = ingest.plan(raw, None, limits=limits, channel=channel)
        elif rule is None:
            form.rule_id.errors = ["Pick a rule (or a channel)."]
        else:
            result = ingest.plan(raw, rule, limits=limits)
        # The plan only reads; nothing of this request is kept.
        db.session.rollback()
    status = 400 if form.is_submitted() and result is None else 200
    return render_template(
        "rules/tester.html", form=form, result=result, rules=all_rules, channels=channels
    ), status
