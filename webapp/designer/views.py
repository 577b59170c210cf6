from __future__ import annotations

from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select

from webapp.casetypes.definition import (
    FIELD_TYPE_LABELS,
    Definition,
    DefinitionError,
    Problem,
)
from webapp.casetypes.diagram import render_svg
from webapp.casetypes.starters import STARTERS
from webapp.designer import bp
from webapp.designer.sending import sending_account_form
from webapp.extensions import db
from webapp.forms.casetypes import (
    AddStageForm,
    CaseTypeForm,
    ConfirmActionForm,
    FieldForm,
    StageForm,
)
from webapp.models import Case, CaseType, CaseTypeVersion, Role
from webapp.security import roles_required
from webapp.services import casetypes as service
from webapp.services.cases import versions_in_use
from webapp.services.groups import all_groups
from webapp.services.instantiation import feeding_listeners

designer_required = roles_required(Role.DESIGNER)


def _case_type(case_type_id: int) -> CaseType:
    case_type = db.session.get(CaseType, case_type_id)
    if case_type is None:
        abort(404)
    return case_type


def _confirmed() -> None:
    if not ConfirmActionForm().validate_on_submit():
        abort(400)


def _draft(case_type: CaseType) -> tuple[Definition | None, list[Problem]]:
    try:
        definition = service.draft_definition(case_type)
    except DefinitionError as exc:
        return None, exc.problems
    return definition, service.publication_problems(case_type)


def _problem_text(definition: Definition | None, problem: Problem) -> tuple[str, str]:
    """(where, what) with the stage or field named the way the designer sees it."""
    where = ""
    if definition is not None and problem.path.startswith(("stages[", "fields[")):
        kind, _, rest = problem.path.partition("[")
        index = int(rest.split("]", 1)[0])
        if kind == "stages" and index < len(definition.stages):
            where = f"Stage “{definition.stages[index].name}”"
        elif kind == "fields" and index < len(definition.fields):
            where = f"Field “{definition.fields[index].label}”"
    return where, problem.message


@bp.route("/")
@designer_required
def index():
    case_types = list(db.session.scalars(select(CaseType).order_by(CaseType.name)))
    counts = {
        type_id: count
        for type_id, count in db.session.execute(
            select(Case.case_type_id, func.count(Case.id)).group_by(Case.case_type_id)
        )
    }
    return render_template("designer/index.html", case_types=case_types, counts=counts)


@bp.route("/new", methods=["GET", "POST"])
@designer_required
def new():
    form = CaseTypeForm()
    if request.method == "GET" and request.args.get("starter") in STARTERS:
        form.starter.data = request.args["starter"]
    if form.validate_on_submit():
        try:
            case_type = service.create_case_type(
                form.name.data, form.prefix.data, form.description.data or "", form.starter.data
            )
        except service.CaseTypeError as exc:
            form.name.errors.append(str(exc))
        else:
            db.session.commit()
            flash(f"Created {case_type.name}. Add fields and stages, then publish.", "success")
            return redirect(url_for("designer.show", case_type_id=case_type.id))
    status = 400 if form.is_submitted() else 200
    return render_template("designer/settings.html", form=form, case_type=None), status


@bp.route("/<int:case_type_id>")
@designer_required
def show(case_type_id: int):
    case_type = _case_type(case_type_id)
    definition, problems = _draft(case_type)
    latest = case_type.latest_version
    unpublished = latest is None or (
        definition is not None and latest.definition != definition.to_dict()
    )
    return render_template(
        "designer/show.html",
        case_type=case_type,
        definition=definition,
        problems=[_problem_text(definition, p) for p in problems],
        unpublished=unpublished,
        add_stage_form=AddStageForm(formdata=None),
        confirm_form=ConfirmActionForm(formdata=None),
        field_types=FIELD_TYPE_LABELS,
        in_use=versions_in_use(case_type),
        feeding=feeding_listeners(case_type),
        sending_form=sending_account_form(case_type),
    )


@bp.route("/<int:case_type_id>/settings", methods=["GET", "POST"])
@designer_required
def settings(case_type_id: int):
    case_type = _case_type(case_type_id)
    form = CaseTypeForm(obj=case_type)
    del form.starter
    if form.validate_on_submit():
        try:
            service.update_case_type(
                case_type, form.name.data, form.prefix.data, form.description.data or ""
            )
        except service.CaseTypeError as exc:
            db.session.rollback()
            form.name.errors.append(str(exc))
        else:
            db.session.commit()
            flash("Saved.", "success")
            return redirect(url_for("designer.show", case_type_id=case_type.id))
    status = 400 if form.is_submitted() else 200
    return render_template("designer/settings.html", form=form, case_type=case_type), status


@bp.route("/<int:case_type_id>/fields/new", methods=["GET", "POST"])
@designer_required
def new_field(case_type_id: int):
    case_type = _case_type(case_type_id)
    form = FieldForm()
    if form.validate_on_submit():
        try:
            service.add_field(case_type, form.to_dict())
        except service.CaseTypeError as exc:
            db.session.rollback()
            form.name.errors.append(str(exc))
        else:
            db.session.commit()
            flash(f"Added the field {form.label.data}.", "success")
            return redirect(url_for("designer.show", case_type_id=case_type.id) + "#fields")
    status = 400 if form.is_submitted() else 200
    return render_template(
        "designer/field.html", form=form, case_type=case_type, field=None
    ), status


@bp.route("/<int:case_type_id>/fields/<name>", methods=["GET", "POST"])
@designer_required
def edit_field(case_type_id: int, name: str):
    case_type = _case_type(case_type_id)
    stored = next((f for f in case_type.draft.get("fields", []) if f.get("name") == name), None)
    if stored is None:
        abort(404)
    form = FieldForm(data={**stored, "options": "\n".join(stored.get("options", []))})
    form.name.data = name
    form.name.render_kw = {"readonly": True}
    if form.validate_on_submit():
        try:
            service.update_field(case_type, name, form.to_dict())
        except service.CaseTypeError as exc:
            db.session.rollback()
            form.label.errors.append(str(exc))
        else:
            db.session.commit()
            flash(f"Saved the field {form.label.data}.", "success")
            return redirect(url_for("designer.show", case_type_id=case_type.id) + "#fields")
    status = 400 if form.is_submitted() else 200
    return render_template(
        "designer/field.html", form=form, case_type=case_type, field=stored
    ), status


@bp.route("/<int:case_type_id>/fields/<name>/remove", methods=["POST"])
@designer_required
def remove_field(case_type_id: int, name: str):
    case_type = _case_type(case_type_id)
    _confirmed()
    service.remove_field(case_type, name)
    db.session.commit()
    flash(f"Removed the field {name}.", "success")
    return redirect(url_for("designer.show", case_type_id=case_type.id) + "#fields")


@bp.route("/<int:case_type_id>/stages", methods=["POST"])
@designer_required
def add_stage(case_type_id: int):
    case_type = _case_type(case_type_id)
    form = AddStageForm()
    if not form.validate_on_submit():
        if form.csrf_token.errors:
            abort(400)
        flash("Give the new stage a name.", "danger")
        return redirect(url_for("designer.show", case_type_id=case_type.id) + "#stages")
    try:
        key = service.add_stage(case_type, form.name.data, form.kind.data)
    except service.CaseTypeError as exc:
        db.session.rollback()
        flash(str(exc), "danger")
        return redirect(url_for("designer.show", case_type_id=case_type.id) + "#stages")
    db.session.commit()
    flash(f"Added the stage {form.name.data}; set it up below.", "success")
    return redirect(url_for("designer.edit_stage", case_type_id=case_type.id, key=key))


@bp.route("/<int:case_type_id>/stages/<key>", methods=["GET", "POST"])
@designer_required
def edit_stage(case_type_id: int, key: str):
    case_type = _case_type(case_type_id)
    stages = case_type.draft.get("stages", [])
    stored = next((s for s in stages if s.get("key") == key), None)
    if stored is None:
        abort(404)
    kind = stored["kind"]
    form = StageForm()
    if request.method == "GET":
        form.load(stored)
    form.drop_unused(kind)
    others = [(s["key"], s["name"]) for s in stages if s["key"] != key]
    email_fields = [
        (f["name"], f["label"]) for f in case_type.draft.get("fields", []) if f["type"] == "email"
    ]
    form.set_choices(others, email_fields, [g.name for g in all_groups()])
    error = ""
    if form.validate_on_submit():
        try:
            service.update_stage(case_type, key, form.to_dict(kind))
        except service.CaseTypeError as exc:
            db.session.rollback()
            if "assignee_group" in form and any(p.path.endswith(".assignee") for p in exc.problems):
                form.assignee_group.errors.append(str(exc))
            else:
                error = str(exc)
        else:
            db.session.commit()
            flash(f"Saved the stage {form.name.data}.", "success")
            return redirect(url_for("designer.show", case_type_id=case_type.id) + "#stages")
    status = 400 if form.is_submitted() else 200
    return render_template(
        "designer/stage.html",
        form=form,
        case_type=case_type,
        stage=stored,
        kind=kind,
        error=error,
        has_email_fields=bool(email_fields),
    ), status


@bp.route("/<int:case_type_id>/stages/<key>/remove", methods=["POST"])
@designer_required
def remove_stage(case_type_id: int, key: str):
    case_type = _case_type(case_type_id)
    _confirmed()
    try:
        service.remove_stage(case_type, key)
    except service.CaseTypeError as exc:
        db.session.rollback()
        flash(str(exc), "danger")
    else:
        db.session.commit()
        flash("Removed the stage.", "success")
    return redirect(url_for("designer.show", case_type_id=case_type.id) + "#stages")


@bp.route("/<int:case_type_id>/stages/<key>/move", methods=["POST"])
@designer_required
def move_stage(case_type_id: int, key: str):
    case_type = _case_type(case_type_id)
    _confirmed()
    offset = -1 if request.form.get("value") == "up" else 1
    try:
        service.move_stage(case_type, key, offset)
    except service.CaseTypeError as exc:
        db.session.rollback()
        flash(str(exc), "danger")
    else:
        db.session.commit()
    return redirect(url_for("designer.show", case_type_id=case_type.id) + "#stages")


@bp.route("/<int:case_type_id>/publish", methods=["POST"])
@designer_required
def publish(case_type_id: int):
    case_type = _case_type(case_type_id)
    _confirmed()
    try:
        version = service.publish(case_type, current_user)
    except service.CaseTypeError as exc:
        db.session.rollback()
        flash(str(exc), "danger")
    else:
        db.session.commit()
        flash(
            f"Published version {version.number} of {case_type.name}. New cases use it; "
            "running cases stay on their version.",
            "success",
        )
    return redirect(url_for("designer.show", case_type_id=case_type.id))


def _svg(definition: Definition | None, title: str, current: str | None = None) -> Response:
    if definition is None or not definition.stages:
        svg = (
            b'<svg xmlns="http://www.w3.org/2000/svg" width="320" height="40">'
            b'<text x="10" y="25" font-family="sans-serif" font-size="13">'
            b"Add stages to see the diagram.</text></svg>"
        )
    else:
        svg = render_svg(definition, title, current)
    response = Response(svg, mimetype="image/svg+xml")
    response.headers["Cache-Control"] = "private, no-cache"
    return response


@bp.route("/<int:case_type_id>/diagram.svg")
@designer_required
def diagram(case_type_id: int):
    case_type = _case_type(case_type_id)
    definition, _ = _draft(case_type)
    return _svg(definition, f"{case_type.name} (draft)")


@bp.route("/<int:case_type_id>/versions/<int:number>/diagram.svg")
@designer_required
def version_diagram(case_type_id: int, number: int):
    version = db.session.scalar(
        select(CaseTypeVersion).where(
            CaseTypeVersion.case_type_id == case_type_id, CaseTypeVersion.number == number
        )
    )
    if version is None:
        abort(404)
    definition = service.version_definition(version)
    return _svg(definition, f"{version.case_type.name} v{number}")
