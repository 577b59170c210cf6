"""Create cases from email: a listener and a rule for a case type, made in one step."""

from __future__ import annotations

from collections.abc import Sequence

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from markupsafe import Markup
from wtforms import SelectChoice, SelectField, StringField, SubmitField
from wtforms.validators import InputRequired, Length

from webapp.designer import bp
from webapp.extensions import db
from webapp.forms.base import BaseForm
from webapp.mail.connect import ConnectivityError
from webapp.models import CaseType, EmailAccount
from webapp.security import admin_required
from webapp.services import instantiation as service
from webapp.services.receiving import server_folders


class FromEmailForm(BaseForm):
    account_id = SelectField("Email account", coerce=int, validate_choice=False)
    folder = StringField(
        "Folder to watch",
        validators=[InputRequired("Enter the folder to watch."), Length(max=255)],
        description="The server did not answer with its folders; type the folder name.",
    )
    submit = SubmitField("Create listener and rule")

    def set_accounts(self, accounts: Sequence[EmailAccount]) -> None:
        self.account_id.choices = [
            SelectChoice(a.id, f"{a.account_id}: {a.name}") for a in accounts
        ]


class FromEmailFolderForm(FromEmailForm):
    """The same form when the server listed its folders."""

    folder = SelectField("Folder to watch", validate_choice=False)

    def set_folders(self, folders: Sequence[str]) -> None:
        self.folder.choices = [SelectChoice(f, f) for f in folders]


def _chosen_account(accounts: list[EmailAccount]) -> EmailAccount | None:
    wanted = request.form.get("account_id") or request.args.get("account")
    if wanted is None:
        return accounts[0] if accounts else None
    try:
        return next((a for a in accounts if a.id == int(wanted)), None)
    except ValueError:
        return None


@bp.route("/<int:case_type_id>/from-email", methods=["GET", "POST"])
@admin_required
def from_email(case_type_id: int):
    case_type = db.session.get(CaseType, case_type_id)
    if case_type is None:
        abort(404)
    accounts = service.receiving_accounts()
    account = _chosen_account(accounts)
    folders: list[str] = []
    folder_note = ""
    if account is not None:
        try:
            folders = server_folders(account)
        except ConnectivityError as exc:
            folder_note = f"The server of {account.account_id} did not list its folders: {exc}"
    form: FromEmailForm
    if folders:
        form = FromEmailFolderForm()
        form.set_folders(folders)
    else:
        form = FromEmailForm()
    form.set_accounts(accounts)
    if not form.is_submitted():
        form.folder.data = "INBOX"
        if account is not None:
            form.account_id.data = account.id
    if form.validate_on_submit():
        try:
            listener, rule = service.create_cases_from_email(
                case_type, account, form.folder.data or "", current_user
            )
        except service.InstantiationError as exc:
            db.session.rollback()
            for name, message in (exc.field_errors or {"account_id": str(exc)}).items():
                field = getattr(form, name, None)
                if field is None:
                    flash(message, "danger")
                elif message not in field.errors:
                    field.errors = [*field.errors, message]
        else:
            db.session.commit()
            flash(
                Markup(
                    "Cases of {} now come from email. Change what was made on its own page: "
                    "<a href='{}'>listener {}</a> and <a href='{}'>rule {}</a>."
                ).format(
                    case_type.name,
                    url_for("listeners.edit", listener_pk=listener.id),
                    listener.name,
                    url_for("rules.edit_rule", rule_id=rule.id),
                    rule.name,
                ),
                "success",
            )
            return redirect(url_for("designer.show", case_type_id=case_type.id))
    status = 400 if form.is_submitted() else 200
    return (
        render_template(
            "designer/from_email.html",
            case_type=case_type,
            form=form,
            account=account,
            accounts=accounts,
            folder_note=folder_note,
        ),
        status,
    )
