from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import or_, select

from webapp.admin import bp
from webapp.extensions import db
from webapp.forms.users import UserCreateForm, UserEditForm
from webapp.models import User
from webapp.security import admin_required
from webapp.services import users as user_service
from webapp.services.status import system_status
from webapp.services.text import like_escaped
from webapp.views import page_number

USERS_PER_PAGE = 25


@bp.route("/users")
@admin_required
def users():
    query = request.args.get("q", "").strip()
    stmt = select(User).order_by(User.email)
    if query:
        pattern = f"%{like_escaped(query.lower())}%"
        stmt = stmt.where(
            or_(User.email.like(pattern, escape="\\"), User.name.ilike(pattern, escape="\\"))
        )
    page = db.paginate(stmt, page=page_number(), per_page=USERS_PER_PAGE, error_out=False)
    return render_template("admin/users.html", page=page, query=query)


@bp.route("/users/new", methods=["GET", "POST"])
@admin_required
def new_user():
    form = UserCreateForm()
    if form.validate_on_submit():
        try:
            user = user_service.create_user(
                form.email.data, form.password.data, form.role.data, name=form.name.data or ""
            )
        except user_service.UserError as exc:
            form.email.errors.append(str(exc))
        else:
            db.session.commit()
            flash(f"{user.email} can now sign in as {user.role}.", "success")
            return redirect(url_for("admin.users"))
    status = 400 if form.is_submitted() else 200
    return render_template("admin/user_form.html", form=form, user=None), status


@bp.route("/users/<int:user_id>", methods=["GET", "POST"])
@admin_required
def edit_user(user_id: int):
    user = db.session.get(User, user_id)
    if user is None:
        abort(404)
    form = UserEditForm(obj=user)
    if form.validate_on_submit():
        try:
            user_service.update_user(
                user,
                role=form.role.data,
                active=form.active.data,
                name=form.name.data or "",
                acting=current_user,
            )
            if form.new_password.data:
                user_service.set_password(user, form.new_password.data)
        except user_service.UserError as exc:
            db.session.rollback()
            form.role.errors.append(str(exc))
        else:
            db.session.commit()
            flash(f"Saved {user.email}.", "success")
            return redirect(url_for("admin.users"))
    status = 400 if form.is_submitted() else 200
    return render_template("admin/user_form.html", form=form, user=user), status


@bp.route("/system")
@admin_required
def system():
    return render_template("admin/system.html", status=system_status())
