"""Cases and case types over the JSON API."""

from __future__ import annotations

from typing import Any

from flask import g, jsonify, request
from sqlalchemy import select

from webapp.api import bp
from webapp.extensions import db
from webapp.models import Case, CaseType, Role
from webapp.security import api_token_required
from webapp.services import cases as service
from webapp.services.casetypes import find_case_type, version_definition
from webapp.services.groups import find_group

MAX_PAGE = 100


def _error(status: int, error: str, message: str, **extra: Any):
    response = jsonify(error=error, message=message, **extra)
    response.status_code = status
    return response


def _may_work_cases():
    if not g.api_user.has_role(Role.WORKER):
        return _error(403, "forbidden", "Only workers and admins work cases.")
    return None


def _case_json(case: Case, *, events: bool = False) -> dict[str, Any]:
    definition = service.definition_of(case)
    names = service.stage_names(definition)
    data: dict[str, Any] = {
        "id": case.reference,
        "case_type": case.case_type.name,
        "version": case.version.number,
        "subject": case.subject,
        "requester": case.requester,
        "stage": case.stage,
        "stage_name": names.get(case.stage, case.stage),
        "status": case.status,
        "resolution": case.resolution,
        "fields": case.fields,
        "assignee": case.assignee.email if case.assignee else None,
        "queue": case.queue,
        "group": case.group.name if case.group else None,
        "approvers": case.approvers,
        "approvals": case.approvals,
        "sla_goal_at": case.sla_goal_at.isoformat() if case.sla_goal_at else None,
        "sla_deadline_at": case.sla_deadline_at.isoformat() if case.sla_deadline_at else None,
        "created_at": case.created_at.isoformat(),
        "updated_at": case.updated_at.isoformat(),
        "row_version": case.row_version,
    }
    if events:
        data["events"] = [
            {
                "kind": e.kind,
                "action": e.action,
                "from": e.from_stage or None,
                "to": e.to_stage or None,
                "actor": e.actor,
                "channel": e.channel,
                "comment": e.comment,
                "at": e.created_at.isoformat(),
            }
            for e in case.events
        ]
    return data


def _json_body() -> dict[str, Any] | None:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else None


@bp.route("/case-types")
@api_token_required
def list_case_types():
    """Case types with their newest published version."""
    result = []
    for case_type in db.session.scalars(select(CaseType).order_by(CaseType.name)):
        latest = case_type.latest_version
        item: dict[str, Any] = {
            "name": case_type.name,
            "prefix": case_type.prefix,
            "description": case_type.description,
            "version": latest.number if latest else None,
        }
        if latest is not None:
            definition = version_definition(latest)
            item["fields"] = [
                {
                    "name": f.name,
                    "label": f.label,
                    "type": f.type,
                    "required": f.required,
                    **({"options": list(f.options)} if f.options else {}),
                }
                for f in definition.fields
            ]
            item["stages"] = [
                {"key": s.key, "name": s.name, "kind": s.kind} for s in definition.stages
            ]
        result.append(item)
    return jsonify(case_types=result)


@bp.route("/cases")
@api_token_required
def list_cases():
    """Filtered cases, newest activity first, with a cursor for the next page."""
    refused = _may_work_cases()
    if refused:
        return refused
    args = request.args
    case_type_id = None
    if args.get("case_type"):
        case_type = find_case_type(args["case_type"])
        if case_type is None:
            return _error(404, "not_found", f"There is no case type {args['case_type']!r}.")
        case_type_id = case_type.id
    group_id = None
    if args.get("group"):
        group = find_group(args["group"])
        if group is None:
            return _error(404, "not_found", f"There is no work group {args['group']!r}.")
        group_id = group.id
    status = args.get("status", "open")
    if status not in ("open", "resolved", "all"):
        return _error(400, "bad_request", "status must be open, resolved or all.")
    sort = args.get("sort", "updated")
    if sort not in service.SORTS:
        return _error(400, "bad_request", f"sort must be one of {', '.join(service.SORTS)}.")
    limit = args.get("limit", 25, type=int) or 25
    if not 1 <= limit <= MAX_PAGE:
        return _error(400, "bad_request", f"limit must be between 1 and {MAX_PAGE}.")
    filters = service.QueueFilter(
        case_type_id=case_type_id,
        stage=args.get("stage", ""),
        status="" if status == "all" else status,
        assignee_id=g.api_user.id if args.get("assignee") == "me" else None,
        group_id=group_id,
        overdue=args.get("overdue") in ("1", "true"),
        text=args.get("q", "")[:200],
        sort=sort,
        mine_for=g.api_user if args.get("mine") in ("1", "true") else None,
    )
    page = service.queue_page(filters, after=args.get("after", ""), per_page=limit)
    return jsonify(
        cases=[_case_json(c) for c in page.items],
        next_cursor=page.next_cursor or None,
    )


@bp.route("/cases/<reference>")
@api_token_required
def get_case(reference: str):
    """One case with its events."""
    refused = _may_work_cases()
    if refused:
        return refused
    case = service.find_case(reference)
    if case is None:
        return _error(404, "not_found", f"There is no case {reference}.")
    return jsonify(_case_json(case, events=True))


@bp.route("/cases", methods=["POST"])
@api_token_required
def create_case():
    """Open a case: {"case_type": "EXP", "subject": "...", "requester": "...", "fields": {}}."""
    refused = _may_work_cases()
    if refused:
        return refused
    body = _json_body()
    if body is None:
        return _error(400, "bad_request", "Send a JSON object.")
    case_type = find_case_type(str(body.get("case_type") or ""))
    if case_type is None:
        return _error(404, "not_found", "Give an existing case_type (its name or prefix).")
    fields = body.get("fields") or {}
    if not isinstance(fields, dict) or not all(
        isinstance(v, str | int | float) and not isinstance(v, bool) for v in fields.values()
    ):
        return _error(400, "bad_request", "fields must be an object of text or number values.")
    unknown = sorted(set(fields) - {f.name for f in _fields_of(case_type)})
    if unknown:
        return _error(
            422,
            "invalid",
            f"Unknown fields: {', '.join(unknown)}.",
            fields={n: "unknown field" for n in unknown},
        )
    try:
        case = service.open_case(
            case_type,
            {name: str(value) for name, value in fields.items()},
            subject=str(body.get("subject") or ""),
            requester=str(body.get("requester") or g.api_user.email),
            user=g.api_user,
            channel="api",
        )
    except service.CaseError as exc:
        db.session.rollback()
        return _error(422, "invalid", str(exc), fields=exc.field_errors)
    db.session.commit()
    response = jsonify(_case_json(case, events=True))
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/cases/{case.reference}"
    return response


def _fields_of(case_type: CaseType) -> list[Any]:
    latest = case_type.latest_version
    return list(version_definition(latest).fields) if latest else []


@bp.route("/cases/<reference>/actions/<action>", methods=["POST"])
@api_token_required
def run_case_action(reference: str, action: str):
    """Run an action: {"comment": "...", "row_version": 3 (optional)}."""
    refused = _may_work_cases()
    if refused:
        return refused
    case = service.find_case(reference)
    if case is None:
        return _error(404, "not_found", f"There is no case {reference}.")
    body = _json_body() if request.data else {}
    if body is None:
        return _error(400, "bad_request", "Send a JSON object (or nothing).")
    expected = body.get("row_version")
    if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool)):
        return _error(400, "bad_request", "row_version must be a number.")
    comment = body.get("comment") or ""
    if not isinstance(comment, str):
        return _error(400, "bad_request", "comment must be text.")
    try:
        outcome = service.apply_action(
            case,
            action,
            user=g.api_user,
            channel="api",
            comment=comment,
            expected_version=expected,
        )
    except service.AlreadyProcessed as exc:
        db.session.rollback()
        return _error(409, "already_processed", str(exc))
    except service.CaseError as exc:
        db.session.rollback()
        return _error(422, "refused", str(exc))
    db.session.commit()
    return jsonify(
        action=outcome.label,
        moved=outcome.moved,
        from_stage=outcome.from_stage,
        to_stage=outcome.to_stage,
        case=_case_json(case, events=True),
    )
