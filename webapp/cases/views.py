from __future__ import annotations

from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from webapp.cases import bp
from webapp.casetypes.definition import Definition
from webapp.casetypes.diagram import render_svg
from webapp.extensions import db
from webapp.forms.cases import (
    AttachmentForm,
    CaseActionForm,
    CommentForm,
    EmailForm,
    case_form_class,
)
from webapp.ids import id_in
from webapp.mail.compose import reply_subject
from webapp.models import (
    Approval,
    Case,
    CaseAttachment,
    CaseType,
    CaseTypeVersion,
    OutboundStatus,
    Role,
    User,
)
from webapp.models.types import utcnow
from webapp.security import roles_required
from webapp.services import cases as service
from webapp.services import compose as compose_service
from webapp.services.casetypes import published_case_types, version_definition
from webapp.services.groups import all_groups
from webapp.services.outbox import sending_account
from webapp.views import file_download

worker_required = roles_required(Role.WORKER)
PER_PAGE = 25
MAX_ASSIGNEE_CHOICES = 200
STATUS_CHOICES = {"open": "Open", "resolved": "Resolved", "all": "Open and resolved"}
SORT_CHOICES = {"updated": "Recently updated", "created": "Newest", "oldest": "Oldest"}


class _Definitions:
    """Definitions by version id, parsed once per request."""

    def __init__(self) -> None:
        self._cache: dict[int, Definition] = {}

    def __call__(self, version: CaseTypeVersion) -> Definition:
        if version.id not in self._cache:
            self._cache[version.id] = version_definition(version)
        return self._cache[version.id]

    def stage_name(self, case: Case) -> str:
        definition = self(case.version)
        try:
            return definition.stage(case.stage).name
        except KeyError:
            return case.stage


def _case(reference: str) -> Case:
    case = service.find_case(reference)
    if case is None:
        abort(404)
    return case


def _stage_choices(case_type: CaseType | None) -> list[tuple[str, str]]:
    if case_type is None:
        return []
    names: dict[str, str] = {}
    for version in case_type.versions:
        for stage in version_definition(version).stages:
            names[stage.key] = stage.name
    return list(names.items())


def _assignee_id(value: str) -> int | None:
    if value == "me":
        return int(current_user.id)
    return id_in(value)


def _render_queue(title: str, mine: bool):
    args = request.args
    case_types = list(db.session.scalars(select(CaseType).order_by(CaseType.name)))
    type_id = args.get("type", type=int)
    case_type = next((ct for ct in case_types if ct.id == type_id), None)
    status = args.get("status", "open")
    if status not in STATUS_CHOICES:
        status = "open"
    stages = _stage_choices(case_type)
    stage = args.get("stage", "")
    if stage not in dict(stages):
        stage = ""
    sort = args.get("sort", "updated")
    if sort not in SORT_CHOICES:
        sort = "updated"
    groups = all_groups()
    group_id = args.get("group", type=int)
    group = next((g for g in groups if g.id == group_id), None)
    filters = service.QueueFilter(
        case_type_id=case_type.id if case_type else None,
        stage=stage,
        status="" if status == "all" else status,
        assignee_id=_assignee_id(args.get("assignee", "")),
        group_id=group.id if group else None,
        overdue=args.get("overdue") == "1",
        text=args.get("q", "").strip()[:200],
        sort=sort,
        mine_for=current_user if mine else None,
    )
    page = service.queue_page(filters, after=args.get("after", ""), per_page=PER_PAGE)
    total = service.queue_count(filters)
    return render_template(
        "cases/queue.html",
        title=title,
        mine=mine,
        page=page,
        total=total,
        count_limit=1000,
        case_types=case_types,
        case_type=case_type,
        stages=stages,
        filters=filters,
        status=status,
        statuses=STATUS_CHOICES,
        sorts=SORT_CHOICES,
        definitions=_Definitions(),
        now=utcnow(),
        endpoint="cases.mine" if mine else "cases.queue",
        assignees=list(
            db.session.scalars(
                select(User)
                .where(User.active, User.role.in_((Role.WORKER.value, Role.ADMIN.value)))
                .order_by(User.email)
                .limit(MAX_ASSIGNEE_CHOICES)
            )
        ),
        assignee=args.get("assignee", ""),
        groups=groups,
        group=group,
    )


@bp.route("/")
@worker_required
def queue():
    return _render_queue("Cases", mine=False)


@bp.route("/mine")
@worker_required
def mine():
    return _render_queue("My work", mine=True)


@bp.route("/new")
@worker_required
def choose_type():
    return render_template("cases/choose_type.html", case_types=published_case_types())


@bp.route("/new/<int:case_type_id>", methods=["GET", "POST"])
@worker_required
def new(case_type_id: int):
    case_type = db.session.get(CaseType, case_type_id)
    if case_type is None or case_type.latest_version is None:
        abort(404)
    definition = version_definition(case_type.latest_version)
    form_class = case_form_class(definition, new_case=True)
    defaults = {f.name: f.default for f in definition.fields if f.default}
    form = form_class(data=defaults) if request.method == "GET" else form_class()
    if form.validate_on_submit():
        try:
            case = service.open_case(
                case_type,
                form.values(),
                subject=form.subject.data or "",
                requester=form.requester.data or current_user.email,
                user=current_user,
            )
        except service.CaseError as exc:
            db.session.rollback()
            form.show_errors(exc.field_errors)
        else:
            db.session.commit()
            flash(f"Opened {case.reference}.", "success")
            return redirect(url_for("cases.show", reference=case.reference))
    status = 400 if form.is_submitted() else 200
    return render_template(
        "cases/new.html", form=form, case_type=case_type, definition=definition
    ), status


def _render_case(case: Case, fields_form=None, status: int = 200):
    definition = service.definition_of(case)
    stage = definition.stage(case.stage)
    editable = service.editable(case)
    if fields_form is None and editable:
        form_class = case_form_class(definition, new_case=False)
        fields_form = form_class(data={**case.fields, "row_version": case.row_version})
    stage_names = service.stage_names(definition)
    return render_template(
        "cases/show.html",
        case=case,
        definition=definition,
        stage=stage,
        stage_names=stage_names,
        actions=service.actions_for(case, current_user),
        action_form=CaseActionForm(formdata=None, row_version=case.row_version),
        comment_form=CommentForm(formdata=None),
        attachment_form=AttachmentForm(formdata=None),
        fields_form=fields_form,
        editable=editable,
        mail=compose_service.case_mail(case),
        mail_badges=MAIL_BADGES,
        approvals=_approvals(case),
        can_send=sending_account(case) is not None,
        now=utcnow(),
    ), status


# Bootstrap badge classes for the states of an outgoing message.
MAIL_BADGES = {
    OutboundStatus.PENDING.value: "text-bg-secondary",
    OutboundStatus.SENDING.value: "text-bg-info",
    OutboundStatus.SENT.value: "text-bg-success",
    OutboundStatus.FAILED.value: "text-bg-danger",
    OutboundStatus.HELD.value: "text-bg-warning",
    OutboundStatus.UNCERTAIN.value: "text-bg-warning",
    OutboundStatus.CANCELLED.value: "text-bg-light",
}


def _approvals(case: Case) -> list[Approval]:
    """The approval requests of the case's latest approval stage visit."""
    latest = db.session.scalar(
        select(Approval.stage_visit)
        .where(Approval.case_id == case.id)
        .order_by(Approval.stage_visit.desc())
        .limit(1)
    )
    if latest is None:
        return []
    return list(
        db.session.scalars(
            select(Approval)
            .where(Approval.case_id == case.id, Approval.stage_visit == latest)
            .order_by(Approval.approver)
        )
    )


@bp.route("/<reference>")
@worker_required
def show(reference: str):
    return _render_case(_case(reference))


@bp.route("/<reference>/actions/<action>", methods=["POST"])
@worker_required
def act(reference: str, action: str):
    case = _case(reference)
    form = CaseActionForm()
    if not form.validate_on_submit():
        if form.csrf_token.errors:
            abort(400)
        flash("The page was out of date; reload it and try again.", "warning")
        return redirect(url_for("cases.show", reference=case.reference))
    try:
        outcome = service.apply_action(
            case,
            action,
            user=current_user,
            channel="web",
            comment=form.comment.data or "",
            expected_version=form.row_version.data,
        )
    except service.CaseError as exc:
        db.session.rollback()
        flash(str(exc), "danger")
        return redirect(url_for("cases.show", reference=reference))
    db.session.commit()
    names = service.stage_names(service.definition_of(case))
    if outcome.moved:
        flash(f"{outcome.label}: {case.reference} is now in {names[outcome.to_stage]}.", "success")
    else:
        flash(f"{outcome.label} recorded; the other approvers still need to decide.", "success")
    return redirect(url_for("cases.show", reference=case.reference))


@bp.route("/<reference>/fields", methods=["POST"])
@worker_required
def update_fields(reference: str):
    case = _case(reference)
    definition = service.definition_of(case)
    form = case_form_class(definition, new_case=False)()
    if not form.validate_on_submit():
        if form.csrf_token.errors:
            abort(400)
        return _render_case(case, form, 400)
    try:
        version = int(form.row_version.data or -1)
    except ValueError:
        version = -1
    try:
        changed = service.update_fields(
            case, form.values(), user=current_user, expected_version=version
        )
    except service.CaseError as exc:
        db.session.rollback()
        if not exc.field_errors:
            flash(str(exc), "danger")
            return redirect(url_for("cases.show", reference=reference))
        form.show_errors(exc.field_errors)
        return _render_case(case, form, 400)
    db.session.commit()
    flash(f"Saved: {', '.join(changed)}." if changed else "Nothing changed.", "success")
    return redirect(url_for("cases.show", reference=case.reference))


@bp.route("/<reference>/comments", methods=["POST"])
@worker_required
def comment(reference: str):
    case = _case(reference)
    form = CommentForm()
    if not form.validate_on_submit():
        if form.csrf_token.errors:
            abort(400)
        flash("Write a comment first.", "warning")
        return redirect(url_for("cases.show", reference=reference))
    try:
        service.add_comment(case, form.comment.data, user=current_user)
    except service.CaseError as exc:
        db.session.rollback()
        flash(str(exc), "danger")
        return redirect(url_for("cases.show", reference=reference))
    db.session.commit()
    return redirect(url_for("cases.show", reference=reference) + "#timeline")


@bp.route("/<reference>/attachments", methods=["POST"])
@worker_required
def attach(reference: str):
    case = _case(reference)
    form = AttachmentForm()
    if not form.validate_on_submit():
        if form.csrf_token.errors:
            abort(400)
        flash(" ".join(form.file.errors) or "Choose a file to attach.", "warning")
        return redirect(url_for("cases.show", reference=reference))
    upload = form.file.data
    try:
        service.add_attachment(
            case, upload.filename or "", upload.mimetype or "", upload.read(), user=current_user
        )
    except service.CaseError as exc:
        db.session.rollback()
        flash(str(exc), "danger")
        return redirect(url_for("cases.show", reference=reference))
    db.session.commit()
    flash(f"Attached {upload.filename}.", "success")
    return redirect(url_for("cases.show", reference=reference) + "#attachments")


@bp.route("/<reference>/attachments/<int:attachment_id>")
@worker_required
def download(reference: str, attachment_id: int):
    case = _case(reference)
    attachment = db.session.get(CaseAttachment, attachment_id)
    if attachment is None or attachment.case_id != case.id:
        abort(404)
    return file_download(attachment.data, attachment.filename)


def _render_email(case: Case, form: EmailForm, status: int = 200):
    form.attachments.choices = [
        (a.id, f"{a.filename} ({a.size:,} bytes)") for a in case.attachments
    ]
    account = sending_account(case)
    return render_template(
        "cases/email.html",
        case=case,
        form=form,
        account=account,
        no_account=compose_service.no_account_message(case) if account is None else "",
        placeholders=compose_service.case_placeholders(case),
    ), status


@bp.route("/<reference>/email", methods=["GET", "POST"])
@worker_required
def email(reference: str):
    case = _case(reference)
    form = EmailForm()
    if not form.is_submitted():
        form.to.data = case.requester
        form.subject.data = reply_subject(case.subject)
        return _render_email(case, form)
    if not form.validate_on_submit():
        if form.csrf_token.errors:
            abort(400)
        return _render_email(case, form, 400)
    try:
        outbound = compose_service.send_from_case(
            case,
            current_user,
            to=form.to.data or "",
            cc=form.cc.data or "",
            subject=form.subject.data or "",
            body=form.body.data or "",
            attachment_ids=form.attachments.data or [],
        )
    except compose_service.ComposeError as exc:
        db.session.rollback()
        for name, message in exc.field_errors.items():
            field = getattr(form, name, None)
            if field is not None:
                field.errors = [*field.errors, message]
        return _render_email(case, form, 400)
    except service.CaseError as exc:
        db.session.rollback()
        flash(str(exc), "danger")
        return redirect(url_for("cases.show", reference=reference))
    db.session.commit()
    flash(
        f"Email to {', '.join(outbound.recipients)} queued; it goes out in a moment.",
        "success",
    )
    return redirect(url_for("cases.show", reference=case.reference) + "#mail")


@bp.route("/<reference>/diagram.svg")
@worker_required
def diagram(reference: str):
    case = _case(reference)
    definition = service.definition_of(case)
    title = f"{case.case_type.name} v{case.version.number}"
    response = Response(render_svg(definition, title, case.stage), mimetype="image/svg+xml")
    response.headers["Cache-Control"] = "private, no-cache"
    return response
