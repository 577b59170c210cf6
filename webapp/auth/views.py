from __future__ import annotations

from urllib.parse import urlsplit

from flask import abort, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy import select

from webapp.auth import bp, throttle
from webapp.extensions import db
from webapp.forms.auth import ApiTokenForm, ChangePasswordForm, ConfirmForm, LoginForm
from webapp.models import ApiToken
from webapp.security import any_role
from webapp.services import users as user_service


def _safe_next(target: str | None) -> str:
    """Only same-site paths; anything else (//evil, https://evil) goes to the dashboard."""
    if target and target.startswith("/") and not target.startswith("//"):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("main.index")


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    form = LoginForm()
    if form.validate_on_submit():
        client = request.remote_addr or "-"
        if throttle.is_locked(form.email.data, client):
            flash("Too many failed attempts. Wait a few minutes and try again.", "danger")
            return render_template("auth/login.html", form=form), 429
        user = user_service.authenticate(form.email.data, form.password.data)
        if user is None:
            throttle.record_failure(form.email.data, client)
            db.session.commit()
            flash("The email or password is not right.", "danger")
            return render_template("auth/login.html", form=form), 200
        throttle.clear(form.email.data, client)
        db.session.commit()
        session.clear()
        login_user(user, remember=form.remember.data)
        return redirect(_safe_next(request.args.get("next")))
    return render_template("auth/login.html", form=form)


@bp.route("/logout", methods=["POST"])
def logout():
    form = ConfirmForm()
    if not form.validate_on_submit():
        abort(400)
    logout_user()
    session.clear()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/account", methods=["GET"])
@any_role
def account():
    return render_template(
        "auth/account.html",
        password_form=ChangePasswordForm(),
        token_form=ApiTokenForm(),
        confirm_form=ConfirmForm(),
        new_token=None,
    )


@bp.route("/account/password", methods=["POST"])
@any_role
def change_password():
    form = ChangePasswordForm()
    if form.validate_on_submit():
        if not user_service.verify_password(current_user, form.current_password.data):
            form.current_password.errors.append("This is not your current password.")
        else:
            try:
                user_service.set_password(current_user, form.new_password.data)
            except user_service.UserError as exc:
                form.new_password.errors.append(str(exc))
            else:
                db.session.commit()
                login_user(current_user)  # the session id changed with the password
                flash("Your password is changed. Your other sessions have ended.", "success")
                return redirect(url_for("auth.account"))
    return render_template(
        "auth/account.html",
        password_form=form,
        token_form=ApiTokenForm(formdata=None),
        confirm_form=ConfirmForm(),
        new_token=None,
    ), 400


@bp.route("/account/tokens", methods=["POST"])
@any_role
def create_token():
    form = ApiTokenForm()
    new_token = None
    status = 400
    if form.validate_on_submit():
        _, new_token = user_service.issue_api_token(current_user, form.name.data)
        db.session.commit()
        status = 201
        form = ApiTokenForm(formdata=None)
    response = render_template(
        "auth/account.html",
        password_form=ChangePasswordForm(formdata=None),
        token_form=form,
        confirm_form=ConfirmForm(),
        new_token=new_token,
    )
    return response, status, {"Cache-Control": "no-store"}


@bp.route("/account/tokens/<int:token_id>/revoke", methods=["POST"])
@login_required
def revoke_token(token_id: int):
    if not ConfirmForm().validate_on_submit():
        abort(400)
    token = db.session.scalar(
        select(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == current_user.id)
    )
    if token is None:
        abort(404)
    user_service.revoke_api_token(token)
    db.session.commit()
    flash(f"The token “{token.name}” is revoked.", "success")
    return redirect(url_for("auth.account"))
