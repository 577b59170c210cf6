"""The account a case type's mail goes out from, picked on the case type's page."""

from __future__ import annotations

from collections.abc import Sequence

from flask import abort, flash, redirect, render_template, url_for
from wtforms import SelectChoice, SelectField, SubmitField

from webapp.designer import bp
from webapp.extensions import db
from webapp.forms.base import BaseForm
from webapp.models import CaseType, EmailAccount, Role
from webapp.security import roles_required
from webapp.services import compose as service

NO_ACCOUNT = 0


class SendingAccountForm(BaseForm):
    account_id = SelectField("Sending account", coerce=int, validate_choice=False)
    submit = SubmitField("Save sending account")

    def set_accounts(self, accounts: Sequence[EmailAccount]) -> None:
        self.account_id.choices = [SelectChoice(NO_ACCOUNT, "— none —")] + [
            SelectChoice(a.id, f"{a.account_id}: {a.smtp_email or a.graph_sender_upn}")
            for a in accounts
        ]


def sending_account_form(case_type: CaseType) -> SendingAccountForm:
    """The form as the case type's page shows it, with the current choice."""
    form = SendingAccountForm(formdata=None)
    form.set_accounts(service.sending_accounts())
    form.account_id.data = case_type.email_account_id or NO_ACCOUNT
    return form


@bp.route("/<int:case_type_id>/sending-account", methods=["POST"])
@roles_required(Role.DESIGNER)
def sending_account(case_type_id: int):
    case_type = db.session.get(CaseType, case_type_id)
    if case_type is None:
        abort(404)
    accounts = service.sending_accounts()
    form = SendingAccountForm()
    form.set_accounts(accounts)
    if not form.validate_on_submit():
        if form.csrf_token.errors:
            abort(400)
        return _render(case_type, form)
    chosen = form.account_id.data or NO_ACCOUNT
    account = next((a for a in accounts if a.id == chosen), None)
    if chosen != NO_ACCOUNT and account is None:
        form.account_id.errors = ["Choose an account that can send, from the list."]
        return _render(case_type, form)
    try:
        service.set_sending_account(case_type, account)
    except service.ComposeError as exc:
        db.session.rollback()
        form.account_id.errors = [str(exc)]
        return _render(case_type, form)
    db.session.commit()
    if account is None:
        flash(f"{case_type.name} has no sending account now.", "success")
    else:
        flash(f"Mail of {case_type.name} cases now goes out from {account.account_id}.", "success")
    return redirect(url_for("designer.show", case_type_id=case_type.id) + "#sending")


def _render(case_type: CaseType, form: SendingAccountForm):
    return render_template("designer/sending.html", case_type=case_type, form=form), 400
