from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from flask import abort, flash, redirect, render_template, url_for
from sqlalchemy import select

from webapp.accounts import bp
from webapp.extensions import db
from webapp.forms.accounts import (
    AccountForm,
    AuthProfileForm,
    KeystoreForm,
    QuickAccountForm,
    keystore_choices,
)
from webapp.forms.auth import ConfirmForm
from webapp.mail import advanced
from webapp.mail.keystore import expires_soon
from webapp.mail.oauth import OAuthError
from webapp.mail.presets import presets_as_data
from webapp.models import AuthProfile, EmailAccount, Keystore, KeystoreKind
from webapp.models.types import utcnow
from webapp.security import admin_required
from webapp.services import accounts as account_service
from webapp.services import auth_profiles as profile_service
from webapp.services import keystores as keystore_service
from webapp.views import delete_and_redirect

SIDES = ("sender", "receiver")


def _account_or_404(account_pk: int) -> EmailAccount:
    account = db.session.get(EmailAccount, account_pk)
    if account is None:
        abort(404)
    return account


def _put_errors(form: Any, errors: dict[str, str]) -> None:
    for name, message in errors.items():
        field = getattr(form, name, None)
        if field is None:
            # The quick form names the sender's address and password differently.
            field = getattr(
                form, {"smtp_email": "email", "smtp_password": "password"}.get(name, ""), None
            )
        if field is None:
            flash(message, "danger")
        elif not field.errors:
            # The form's own message about a field is the more precise one.
            field.errors = [*field.errors, message]


def _presets_json() -> str:
    return json.dumps(presets_as_data())


@bp.route("/admin/accounts")
@admin_required
def accounts():
    rows = db.session.scalars(select(EmailAccount).order_by(EmailAccount.account_id)).all()
    return render_template(
        "accounts/list.html", accounts=rows, listeners=account_service.listeners_by_account()
    )


@bp.route("/admin/accounts/new", methods=["GET", "POST"])
@admin_required
def new_quick():
    form = QuickAccountForm()
    form.set_profiles(profile_service.list_profiles())
    if form.validate_on_submit():
        values = form.values()
        account_service.apply_preset(values)
        try:
            account = account_service.save_account(
                None, form.account_id.data, values, {"smtp_password": form.password.data or None}
            )
        except account_service.AccountError as exc:
            db.session.rollback()
            _put_errors(form, exc.errors)
        else:
            db.session.commit()
            flash(f"Account {account.account_id} saved. Test its connectivity below.", "success")
            return redirect(url_for("accounts.show", account_pk=account.id))
    elif form.is_submitted():
        # Every refused field in one round, not the form's first and the service's next time.
        values = form.values()
        account_service.apply_preset(values)
        _put_errors(
            form,
            account_service.account_errors(
                None, form.account_id.data or "", values, {"smtp_password": form.password.data}
            ),
        )
    status = 400 if form.is_submitted() else 200
    return render_template("accounts/quick.html", form=form, presets=_presets_json()), status


def _editor(account: EmailAccount | None):
    form = AccountForm(obj=account or account_service.new_account())
    form.set_keystores(
        keystore_service.list_keystores(KeystoreKind.TRUSTSTORE),
        keystore_service.list_keystores(KeystoreKind.SIGNING),
    )
    form.set_profiles(profile_service.list_profiles())
    if account is not None:
        form.account_id.data = account.account_id
    if not form.is_submitted():
        source = account or account_service.new_account()
        form.smtp_advanced.data = advanced.format_overrides(source.smtp_advanced or {})
        form.receiver_advanced.data = advanced.format_overrides(source.receiver_advanced or {})
    if form.validate_on_submit():
        try:
            saved = account_service.save_account(
                account, form.account_id.data, form.values(), form.passwords()
            )
        except account_service.AccountError as exc:
            db.session.rollback()
            _put_errors(form, exc.errors)
        else:
            db.session.commit()
            flash(f"Account {saved.account_id} saved.", "success")
            return redirect(url_for("accounts.show", account_pk=saved.id))
    elif form.is_submitted():
        # Every refused field in one round, not the form's first and the service's next time.
        _put_errors(
            form,
            account_service.account_errors(
                account, form.account_id.data or "", form.values(), form.passwords()
            ),
        )
    status = 400 if form.is_submitted() else 200
    return render_template(
        "accounts/editor.html",
        form=form,
        account=account,
        presets=_presets_json(),
        sender_keys=advanced.SENDER_KEYS,
        receiver_keys=advanced.RECEIVER_KEYS,
    ), status


@bp.route("/admin/accounts/new/full", methods=["GET", "POST"])
@admin_required
def new_full():
    return _editor(None)


@bp.route("/admin/accounts/<int:account_pk>/edit", methods=["GET", "POST"])
@admin_required
def edit(account_pk: int):
    return _editor(_account_or_404(account_pk))


@bp.route("/admin/accounts/<int:account_pk>")
@admin_required
def show(account_pk: int):
    account = _account_or_404(account_pk)
    return render_template(
        "accounts/show.html",
        account=account,
        listeners=account_service.listeners_of(account),
        form=ConfirmForm(formdata=None),
    )


@bp.route("/admin/accounts/<int:account_pk>/test/<side>", methods=["POST"])
@admin_required
def test(account_pk: int, side: str):
    account = _account_or_404(account_pk)
    if side not in SIDES or not ConfirmForm().validate_on_submit():
        abort(400)
    result = account_service.check_connectivity(account, side)
    db.session.commit()
    flash(result.message, "success" if result.ok else "danger")
    return redirect(url_for("accounts.show", account_pk=account.id))


@bp.route("/admin/accounts/<int:account_pk>/delete", methods=["POST"])
@admin_required
def delete(account_pk: int):
    account = _account_or_404(account_pk)
    home = url_for("accounts.accounts")
    return delete_and_redirect(
        lambda: account_service.delete_account(account),
        refused=account_service.AccountInUse,
        done=f"Account {account.account_id} deleted.",
        back=home,
        home=home,
    )


# -- keystores --------------------------------------------------------------------------------


def _keystore_or_404(keystore_pk: int) -> Keystore:
    keystore = db.session.get(Keystore, keystore_pk)
    if keystore is None:
        abort(404)
    return keystore


@bp.route("/admin/keystores")
@admin_required
def keystores():
    return render_template(
        "accounts/keystores.html",
        keystores=keystore_service.list_keystores(),
        expires_soon=expires_soon,
        now=utcnow(),
    )


@bp.route("/admin/keystores/new", methods=["GET", "POST"])
@admin_required
def new_keystore():
    form = KeystoreForm()
    if form.validate_on_submit():
        upload = form.file.data
        try:
            keystore = keystore_service.create_keystore(
                form.name.data,
                form.kind.data,
                upload.filename or "",
                upload.read(),
                form.password.data or "",
            )
        except keystore_service.KeystoreRefused as exc:
            db.session.rollback()
            getattr(form, exc.field).errors.append(str(exc))
        else:
            db.session.commit()
            flash(f"Keystore {keystore.name} saved.", "success")
            return redirect(url_for("accounts.show_keystore", keystore_pk=keystore.id))
    status = 400 if form.is_submitted() else 200
    return render_template("accounts/keystore_form.html", form=form), status


@bp.route("/admin/keystores/<int:keystore_pk>")
@admin_required
def show_keystore(keystore_pk: int):
    keystore = _keystore_or_404(keystore_pk)
    return render_template(
        "accounts/keystore.html",
        keystore=keystore,
        used_by=keystore_service.accounts_using(keystore),
        expires_soon=expires_soon,
        now=utcnow(),
        form=ConfirmForm(formdata=None),
    )


@bp.route("/admin/keystores/<int:keystore_pk>/delete", methods=["POST"])
@admin_required
def delete_keystore(keystore_pk: int):
    keystore = _keystore_or_404(keystore_pk)
    return delete_and_redirect(
        lambda: keystore_service.delete_keystore(keystore),
        refused=keystore_service.KeystoreRefused,
        done=f"Keystore {keystore.name} deleted.",
        back=url_for("accounts.show_keystore", keystore_pk=keystore.id),
        home=url_for("accounts.keystores"),
    )


# -- OAuth 2.0 profiles -----------------------------------------------------------------------


def _profile_or_404(profile_pk: int) -> AuthProfile:
    profile = db.session.get(AuthProfile, profile_pk)
    if profile is None:
        abort(404)
    return profile


@bp.route("/admin/auth-profiles")
@admin_required
def auth_profiles():
    return render_template(
        "accounts/auth_profiles.html",
        profiles=profile_service.list_profiles(),
        form=ConfirmForm(formdata=None),
    )


def _profile_editor(profile: AuthProfile | None):
    form = AuthProfileForm(obj=profile)
    form.truststore_id.choices = keystore_choices(
        keystore_service.list_keystores(KeystoreKind.TRUSTSTORE), "Public CAs"
    )
    if form.validate_on_submit():
        try:
            saved = profile_service.save_profile(profile, form.values(), form.secrets())
        except profile_service.AuthProfileError as exc:
            db.session.rollback()
            _put_errors(form, exc.errors)
        else:
            db.session.commit()
            flash(f"OAuth 2.0 profile {saved.name} saved.", "success")
            return redirect(url_for("accounts.auth_profiles"))
    elif form.is_submitted():
        _put_errors(form, profile_service.profile_errors(profile, form.values(), form.secrets()))
    # A pasted key is a secret: never send it back to the browser.
    form.service_account_key.data = ""
    status = 400 if form.is_submitted() else 200
    return render_template("accounts/auth_profile_form.html", form=form, profile=profile), status


@bp.route("/admin/auth-profiles/new", methods=["GET", "POST"])
@admin_required
def new_auth_profile():
    return _profile_editor(None)


@bp.route("/admin/auth-profiles/<int:profile_pk>", methods=["GET", "POST"])
@admin_required
def edit_auth_profile(profile_pk: int):
    return _profile_editor(_profile_or_404(profile_pk))


@bp.route("/admin/auth-profiles/<int:profile_pk>/token", methods=["POST"])
@admin_required
def test_auth_profile(profile_pk: int):
    profile = _profile_or_404(profile_pk)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        token = profile_service.profile_token(profile)
    except OAuthError as exc:
        flash(f"{profile.name}: {exc}", "danger")
    else:
        valid = datetime.fromtimestamp(token.expires_at, UTC).strftime("%H:%M UTC")
        flash(f"{profile.name}: a token was issued, valid until {valid}.", "success")
    return redirect(url_for("accounts.auth_profiles"))


@bp.route("/admin/auth-profiles/<int:profile_pk>/delete", methods=["POST"])
@admin_required
def delete_auth_profile(profile_pk: int):
    profile = _profile_or_404(profile_pk)
    home = url_for("accounts.auth_profiles")
    return delete_and_redirect(
        lambda: profile_service.delete_profile(profile),
        refused=profile_service.AuthProfileError,
        done=f"OAuth 2.0 profile {profile.name} deleted.",
        back=home,
        home=home,
    )


@bp.app_template_filter("iso_date")
def _iso_date(value: str) -> str:
    return value[:10]
