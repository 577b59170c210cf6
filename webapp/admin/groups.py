"""Work-queue groups: list, create, rename, delete, members."""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, url_for
from sqlalchemy import func, select

from webapp.admin import bp
from webapp.extensions import db
from webapp.forms.auth import ConfirmForm
from webapp.forms.groups import GroupForm
from webapp.models import Case, User, WorkGroup
from webapp.security import admin_required
from webapp.services import groups as service
from webapp.views import delete_and_redirect

MAX_PEOPLE = 500


def _group(group_id: int) -> WorkGroup:
    group = db.session.get(WorkGroup, group_id)
    if group is None:
        abort(404)
    return group


def _form(group: WorkGroup | None) -> GroupForm:
    form = GroupForm(
        data={"name": group.name, "members": [u.email for u in group.members]} if group else None
    )
    people = db.session.scalars(
        select(User)
        .where(User.role.in_(service.MEMBER_ROLES))
        .order_by(User.email)
        .limit(MAX_PEOPLE)
    )
    form.set_people(list(people))
    return form


@bp.route("/groups")
@admin_required
def groups():
    open_cases = dict(
        db.session.execute(
            select(Case.group_id, func.count(Case.id))
            .where(Case.status == "open", Case.group_id.is_not(None))
            .group_by(Case.group_id)
        ).all()
    )
    return render_template("admin/groups.html", groups=service.all_groups(), open_cases=open_cases)


@bp.route("/groups/new", methods=["GET", "POST"])
@admin_required
def new_group():
    form = _form(None)
    if form.validate_on_submit():
        try:
            group = service.create_group(form.name.data or "")
            service.set_members(group, form.members.data or [])
        except service.GroupError as exc:
            db.session.rollback()
            form.name.errors.append(str(exc))
        else:
            db.session.commit()
            flash(f"Created the group {group.name}.", "success")
            return redirect(url_for("admin.groups"))
    status = 400 if form.is_submitted() else 200
    return render_template("admin/group_form.html", form=form, group=None), status


@bp.route("/groups/<int:group_id>", methods=["GET", "POST"])
@admin_required
def edit_group(group_id: int):
    group = _group(group_id)
    form = _form(group)
    if form.validate_on_submit():
        try:
            renamed = service.rename_group(group, form.name.data or "")
            service.set_members(group, form.members.data or [])
        except service.GroupError as exc:
            db.session.rollback()
            form.name.errors.append(str(exc))
        else:
            db.session.commit()
            also = (
                f" Stages of {', '.join(renamed)} now route to it by its new name."
                if renamed
                else ""
            )
            flash(f"Saved the group {group.name}.{also}", "success")
            return redirect(url_for("admin.groups"))
    status = 400 if form.is_submitted() else 200
    return render_template(
        "admin/group_form.html",
        form=form,
        group=group,
        using=service.case_types_using(group),
        delete_form=ConfirmForm(formdata=None),
    ), status


@bp.route("/groups/<int:group_id>/delete", methods=["POST"])
@admin_required
def delete_group(group_id: int):
    group = _group(group_id)
    return delete_and_redirect(
        lambda: service.delete_group(group),
        refused=service.GroupError,
        done=f"Deleted the group {group.name}.",
        back=url_for("admin.edit_group", group_id=group_id),
        home=url_for("admin.groups"),
    )
