"""Cases: open them, apply actions through the engine, record events, queue notifications."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, String, and_, bindparam, cast, func, or_, select, tuple_, update
from sqlalchemy.orm.exc import StaleDataError

from webapp.casetypes.definition import (
    APPROVAL,
    EMAIL_RE,
    WORK,
    Definition,
    StageDef,
    check_values,
)
from webapp.casetypes.engine import (
    APPROVE,
    REJECT,
    Actor,
    CaseActionError,
    CaseSnapshot,
    Outcome,
    available_actions,
    resolve_approvers,
    run_action,
    status_of,
)
from webapp.casetypes.templating import render
from webapp.extensions import db
from webapp.ids import id_in
from webapp.models import (
    Case,
    CaseAttachment,
    CaseCounter,
    CaseEvent,
    CaseType,
    CaseTypeVersion,
    EmailAccount,
    OutboundKind,
    User,
    work_group_members,
)
from webapp.models.types import utcnow
from webapp.services import approvals as approval_service
from webapp.services.casetypes import version_definition
from webapp.services.groups import find_group, group_names_of
from webapp.services.outbox import queue_message
from webapp.services.text import like_escaped

MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
CHANNELS = ("web", "email", "api", "system")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The last microsecond a cursor can name: a datetime ends with year 9999.
_LAST_MICROSECOND = (datetime(9999, 12, 31, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)
REFERENCE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,9}-\d{1,12}$")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class CaseError(ValueError):
    """A case operation was refused; the message is fit to show."""

    def __init__(self, message: str, field_errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.field_errors = field_errors or {}


class AlreadyProcessed(CaseError):
    """Someone else changed the case first; the action was not applied."""


def actor_for(user: User | None, channel: str) -> Actor:
    if user is None:
        return Actor(email="system", role="system", channel=channel)
    return Actor(email=user.email, role=user.role, channel=channel, groups=group_names_of(user))


def definition_of(case: Case) -> Definition:
    return version_definition(case.version)


def snapshot_of(case: Case) -> CaseSnapshot:
    return CaseSnapshot(
        stage=case.stage,
        fields=dict(case.fields or {}),
        approvals=tuple(case.approvals or ()),
        approvers=tuple(case.approvers or ()),
    )


# One UPDATE both reserves numbers and locks the counter row until commit, so two
# transactions never get the same number and a rolled-back one gives its numbers back. Built
# once and run on the session's connection: no autoflush of unrelated pending rows, no ORM cost.
_RESERVE = (
    update(CaseCounter)
    .where(CaseCounter.case_type_id == bindparam("type_id"))
    .values(next_number=CaseCounter.next_number + bindparam("count"))
    .returning(CaseCounter.next_number)
)


def reserve_numbers(case_type_id: int, count: int) -> int:
    """Reserve `count` consecutive case numbers of a case type; returns the first.

    The counter row stays locked until the transaction ends: no other transaction numbers a
    case of the type meanwhile, and a rollback gives the numbers back, so there are no gaps.
    Raises CaseError when the case type has no counter.
    """
    end = (
        db.session.connection()
        .execute(_RESERVE, {"type_id": case_type_id, "count": count})
        .scalar_one_or_none()
    )
    if end is None:
        raise CaseError("This case type has no case counter; re-create it.")
    return end - count


def lock_counters(case_type_ids: set[int]) -> None:
    """Lock the counter rows of these case types until the transaction ends, in the order of
    their ids: a caller that takes numbers of several types, at several moments, locks them
    all first, so that two such transactions never wait for each other's counter rows (nor
    for a case row one of them wrote before it asked for a counter)."""
    if case_type_ids:
        db.session.connection().execute(
            select(CaseCounter.case_type_id)
            .where(CaseCounter.case_type_id.in_(case_type_ids))
            .order_by(CaseCounter.case_type_id)
            .with_for_update()
        ).all()


def number_cases(cases: list[Case]) -> None:
    """Give cases opened with `numbered=False` their numbers and references, in the order of
    `cases`: one reservation per case type, in the order of the types' ids."""
    by_type: dict[int, tuple[CaseType, list[Case]]] = {}
    for case in cases:
        by_type.setdefault(case.case_type.id, (case.case_type, []))[1].append(case)
    for type_id in sorted(by_type):
        case_type, of_type = by_type[type_id]
        first = reserve_numbers(type_id, len(of_type))
        for number, case in enumerate(of_type, start=first):
            case.number = number
            case.reference = f"{case_type.prefix}-{number}"


def opening_mails(case_type: CaseType) -> bool:
    """Whether opening a case of the type queues mail at once, which shows the case's
    reference: its first stage asks for approvals or notifies someone."""
    version = case_type.latest_version
    if version is None:
        return False
    stage = version_definition(version).first_stage
    return stage.kind == APPROVAL or bool(stage.notifications)


def requester_problem(requester: str) -> str | None:
    """Why `requester` (lower-cased, stripped) cannot be a case's requester; None if it can.
    The requester is notified: anything but one address would misdirect the mail."""
    if len(requester) > 320:
        return "That address is too long."
    if requester and not EMAIL_RE.match(requester):
        return "Enter the requester's email address, such as name@example.com."
    return None


def open_case(
    case_type: CaseType,
    values: dict[str, str],
    *,
    subject: str,
    requester: str,
    user: User | None,
    channel: str = "web",
    require_fields: bool = True,
    email_account: EmailAccount | None = None,
    flush: bool = True,
    entries: list[dict[str, Any]] | None = None,
    numbered: bool = True,
) -> Case:
    """Open a case on the newest published version; raises CaseError (with field errors).

    The case's mail goes out from `email_account` (the account it arrived through), else
    from its case type's account. Without `flush` the case has no id until the caller
    flushes (ingest writes a message's case, its events and attachments in one flush).
    With `entries` the "created" timeline entry is not added to the session: its column
    values are appended there, for the caller to insert with the case's id once the case is
    written (ingest inserts a batch's entries in one statement). Without `numbered` the case
    has neither number nor reference until the caller gives it them with `number_cases`,
    before it is written: the counter row, locked from a case's numbering until the commit,
    is then locked only for the end of the caller's transaction.
    """
    version = case_type.latest_version
    if version is None:
        raise CaseError(f"{case_type.name} has no published version yet; publish it first.")
    definition = version_definition(version)
    defaults = {f.name: f.default for f in definition.fields if f.default}
    cleaned, errors = check_values(definition, {**defaults, **values}, require=require_fields)
    subject = subject.strip()
    if not subject:
        errors["subject"] = "Give the case a subject."
    elif len(subject) > 300:
        errors["subject"] = "Keep the subject under 300 characters."
    requester = requester.strip().lower()
    problem = requester_problem(requester)
    if problem:
        errors["requester"] = problem
    if errors:
        raise CaseError("Some fields need a change: " + " ".join(errors.values()), errors)
    number_of_case = reserve_numbers(case_type.id, 1) if numbered else 0
    now = utcnow()
    case = Case(
        case_type=case_type,
        version=version,
        number=number_of_case,
        reference=f"{case_type.prefix}-{number_of_case}" if numbered else "",
        subject=subject,
        requester=requester,
        fields=cleaned,
        approvals=[],
        approvers=[],
        created_by_id=user.id if user else None,
        created_at=now,
        updated_at=now,
        stage=definition.first_stage.key,
        email_account=email_account or case_type.email_account,
    )
    db.session.add(case)
    actor = actor_for(user, channel)
    if numbered:
        _enter_stage(case, definition, definition.first_stage, now)
    else:
        # Its stage's look-ups (an assignee, a group) must not write it before it has a number.
        with db.session.no_autoflush:
            _enter_stage(case, definition, definition.first_stage, now)
    if entries is None:
        _event(case, actor, user, "created", to_stage=case.stage, action="Created")
    else:
        entries.append(_event_values(actor, user, "created", to_stage=case.stage, action="Created"))
    if flush:
        db.session.flush()
    return case


def _event(
    case: Case,
    actor: Actor,
    user: User | None,
    kind: str,
    *,
    action: str = "",
    from_stage: str = "",
    to_stage: str = "",
    comment: str = "",
) -> CaseEvent:
    event = CaseEvent(
        case=case,
        **_event_values(
            actor,
            user,
            kind,
            action=action,
            from_stage=from_stage,
            to_stage=to_stage,
            comment=comment,
        ),
    )
    db.session.add(event)
    return event


def _event_values(
    actor: Actor,
    user: User | None,
    kind: str,
    *,
    action: str = "",
    from_stage: str = "",
    to_stage: str = "",
    comment: str = "",
) -> dict[str, Any]:
    return {
        "kind": kind,
        "actor_id": user.id if user else None,
        "actor": actor.email,
        "channel": actor.channel,
        "action": action,
        "from_stage": from_stage,
        "to_stage": to_stage,
        "comment": comment,
        "created_at": utcnow(),
    }


def _enter_stage(case: Case, definition: Definition, stage: StageDef, now: datetime) -> None:
    approval_service.supersede_pending(case)
    case.stage = stage.key
    case.status = status_of(definition, stage.key)
    case.resolution = stage.resolution if stage.is_resolution else None
    case.stage_entered_at = now
    case.stage_visit = (case.stage_visit or 0) + 1
    case.approvals = []
    case.approvers = list(resolve_approvers(stage, case.fields or {}))
    case.assignee_id = None
    case.queue = None
    case.group = None
    if stage.kind == WORK and stage.assignee_kind == "user":
        assignee = db.session.scalar(select(User).where(User.email == stage.assignee.lower()))
        case.assignee_id = assignee.id if assignee else None
    elif stage.kind == WORK and stage.assignee_kind == "role":
        case.queue = stage.assignee
    elif stage.kind == WORK and stage.assignee_kind == "group":
        case.group = find_group(stage.assignee)
        if case.group is None:
            # Publishing checks the group exists, but it may have been deleted since: the
            # admins' queue gets the case rather than nobody.
            case.queue = "admin"
    case.sla_goal_at = now + timedelta(hours=stage.sla_goal_hours) if stage.sla_goal_hours else None
    case.sla_deadline_at = (
        now + timedelta(hours=stage.sla_deadline_hours) if stage.sla_deadline_hours else None
    )
    if stage.kind == APPROVAL and not case.approvers:
        # The approver field is empty, so no approver could ever decide: the admins' queue
        # gets the case (admins may decide any approval).
        case.queue = "admin"
    requested = approval_service.issue_requests(case, definition, stage)
    _queue_notifications(case, definition, stage, {a.approver for a in requested})


def template_values(case: Case, stage: StageDef) -> dict[str, str]:
    """What the stage's texts (notifications, approval requests) may name: the case's fields
    and case_id, case_type, subject, requester and stage."""
    values = {name: str(value) for name, value in (case.fields or {}).items()}
    values.update(
        case_id=case.reference,
        case_type=case.case_type.name,
        subject=case.subject,
        requester=case.requester,
        stage=stage.name,
    )
    return values


def _queue_notifications(
    case: Case, definition: Definition, stage: StageDef, requested: set[str] | None = None
) -> None:
    values = template_values(case, stage)
    assignee_email = ""
    if case.assignee_id is not None:
        assignee = db.session.get(User, case.assignee_id)
        assignee_email = assignee.email if assignee else ""
    for note in stage.notifications:
        recipients: list[str] = []
        if "requester" in note.recipients and case.requester:
            recipients.append(case.requester)
        if "approvers" in note.recipients:
            # An approver sent an approval request has this notification's text in it.
            recipients.extend(a for a in case.approvers if a not in (requested or ()))
        if "assignee" in note.recipients and assignee_email:
            recipients.append(assignee_email)
        recipients.extend(a.lower() for a in note.addresses)
        recipients.extend(
            str(values.get(name, "")).lower() for name in note.address_fields if values.get(name)
        )
        recipients = list(dict.fromkeys(r for r in recipients if r))
        if not recipients:
            continue
        queue_message(
            case,
            kind=OutboundKind.NOTIFICATION,
            recipients=recipients,
            subject=render(note.subject, values),
            body=render(note.body, values),
            stage=stage.key,
            attach_case_files=note.attach_files,
        )


def apply_action(
    case: Case,
    action: str,
    *,
    user: User | None,
    channel: str = "web",
    comment: str = "",
    expected_version: int | None = None,
) -> Outcome:
    """Run an action on the case through the engine and record it.

    Raises CaseError when the engine refuses, AlreadyProcessed when the case changed since
    `expected_version` or another transaction changed it first.
    """
    already = f"{case.reference} was already processed by someone else; reload to see it."
    if expected_version is not None and expected_version != case.row_version:
        raise AlreadyProcessed(already)
    definition = definition_of(case)
    actor = actor_for(user, channel)
    visit = case.stage_visit
    try:
        outcome = run_action(definition, snapshot_of(case), action, actor, comment.strip())
    except CaseActionError as exc:
        raise CaseError(str(exc)) from None
    now = utcnow()
    # The case row is written once, by the flush below, whose version check is what detects
    # a concurrent change; an autoflush in between would raise it somewhere less useful.
    with db.session.no_autoflush:
        case.updated_at = now
        _event(
            case,
            actor,
            user,
            "action",
            action=outcome.label,
            from_stage=outcome.from_stage,
            to_stage=outcome.to_stage,
            comment=comment.strip()[:5000],
        )
        if outcome.moved:
            _enter_stage(case, definition, definition.stage(outcome.to_stage), now)
        else:
            case.approvals = list(outcome.approvals)
    try:
        db.session.flush()
    except StaleDataError:
        raise AlreadyProcessed(already) from None
    if action in (APPROVE, REJECT) and actor.email:
        approval_service.record_decision(case, visit, actor.email, action, comment, via=channel)
    return outcome


def editable(case: Case) -> bool:
    """Whether the case's fields may be edited in its current stage."""
    return definition_of(case).stage(case.stage).edit_fields and case.status == "open"


def update_fields(
    case: Case,
    values: dict[str, str],
    *,
    user: User | None,
    channel: str = "web",
    expected_version: int | None = None,
) -> list[str]:
    """Change field values where the stage allows; returns the labels changed.

    Raises CaseError (with field errors) or AlreadyProcessed.
    """
    already = f"{case.reference} was changed by someone else; reload to see it."
    if expected_version is not None and expected_version != case.row_version:
        raise AlreadyProcessed(already)
    if not editable(case):
        raise CaseError(f"Fields cannot be edited in the stage {case.stage}.")
    definition = definition_of(case)
    cleaned, errors = check_values(definition, values, require=False)
    if errors:
        raise CaseError("Some fields need a change.", errors)
    current = dict(case.fields or {})
    changed = [f.label for f in definition.fields if current.get(f.name, "") != cleaned[f.name]]
    if changed:
        case.fields = {**current, **cleaned}
        case.updated_at = utcnow()
        _event(
            case,
            actor_for(user, channel),
            user,
            "fields",
            action="Edited",
            comment="Changed: " + ", ".join(changed),
        )
        try:
            db.session.flush()
        except StaleDataError:
            raise AlreadyProcessed(already) from None
    return changed


def add_attachment(
    case: Case, filename: str, content_type: str, data: bytes, *, user: User | None
) -> CaseAttachment:
    """Store a file on the case; raises CaseError when it is empty or too large,
    AlreadyProcessed."""
    # Only the last path part, without control characters (which would break the download's
    # Content-Disposition header).
    name = CONTROL_CHARS.sub("", filename.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    name = name[:255] or "attachment"
    if not data:
        raise CaseError("The file is empty.")
    if len(data) > MAX_ATTACHMENT_BYTES:
        raise CaseError(f"Files up to {MAX_ATTACHMENT_BYTES // (1024 * 1024)} MB can be attached.")
    attachment = CaseAttachment(
        case=case,
        filename=name,
        content_type=(content_type or "application/octet-stream")[:100],
        size=len(data),
        data=data,
        uploaded_by_id=user.id if user else None,
    )
    db.session.add(attachment)
    _event(case, actor_for(user, "web"), user, "comment", action="Attached", comment=name)
    case.updated_at = utcnow()
    _flush_case(case)
    return attachment


def add_comment(case: Case, text: str, *, user: User | None, channel: str = "web") -> None:
    """Add a note to the timeline; raises CaseError when it is empty, AlreadyProcessed."""
    text = text.strip()
    if not text:
        raise CaseError("Write a comment first.")
    _event(case, actor_for(user, channel), user, "comment", action="Comment", comment=text[:5000])
    case.updated_at = utcnow()
    _flush_case(case)


def reopen_case(case: Case, *, user: User | None, channel: str, comment: str = "") -> None:
    """Move a resolved case back to its first stage; raises CaseError, AlreadyProcessed."""
    if case.status == "open":
        raise CaseError(f"{case.reference} is open already.")
    definition = definition_of(case)
    now = utcnow()
    with db.session.no_autoflush:
        from_stage = case.stage
        _enter_stage(case, definition, definition.first_stage, now)
        case.updated_at = now
        _event(
            case,
            actor_for(user, channel),
            user,
            "action",
            action="Reopened",
            from_stage=from_stage,
            to_stage=case.stage,
            comment=comment.strip()[:5000],
        )
    _flush_case(case)


def _flush_case(case: Case) -> None:
    """Write the case; raises AlreadyProcessed when another transaction changed it first."""
    # Worded before the flush: after a failed flush the case cannot be read any more.
    message = f"{case.reference} was changed by someone else at the same time; try again."
    try:
        db.session.flush()
    except StaleDataError:
        raise AlreadyProcessed(message) from None


def actions_for(case: Case, user: User) -> list[tuple[str, str, str, bool]]:
    """(slug, label, kind, reason required) for each action `user` may take now."""
    choices = available_actions(definition_of(case), snapshot_of(case), actor_for(user, "web"))
    return [(c.slug, c.label, c.kind, c.reason_required) for c in choices]


# The queue ------------------------------------------------------------------------------

SORTS = {
    "updated": ("updated_at", True),
    "created": ("created_at", True),
    "oldest": ("created_at", False),
}


@dataclass(frozen=True)
class QueueFilter:
    case_type_id: int | None = None
    stage: str = ""
    status: str = "open"  # open / resolved / "" for both
    assignee_id: int | None = None
    queue: str = ""
    group_id: int | None = None
    overdue: bool = False
    text: str = ""
    sort: str = "updated"
    mine_for: User | None = None


@dataclass(frozen=True)
class QueuePage:
    items: list[Case]
    next_cursor: str
    has_more: bool


def _queue_statement(filters: QueueFilter, now: datetime) -> Select[Case]:
    stmt = select(Case)
    if filters.case_type_id:
        stmt = stmt.where(Case.case_type_id == filters.case_type_id)
    if filters.stage:
        stmt = stmt.where(Case.stage == filters.stage)
    if filters.status:
        stmt = stmt.where(Case.status == filters.status)
    if filters.assignee_id:
        stmt = stmt.where(Case.assignee_id == filters.assignee_id)
    if filters.queue:
        stmt = stmt.where(Case.queue == filters.queue)
    if filters.group_id:
        stmt = stmt.where(Case.group_id == filters.group_id)
    if filters.overdue:
        stmt = stmt.where(Case.status == "open", Case.sla_deadline_at < now)
    if filters.text:
        text = filters.text.strip()
        if REFERENCE_RE.match(text):
            # A case id is looked up in its unique index, not scanned for.
            stmt = stmt.where(Case.reference == text.upper())
        else:
            pattern = f"%{like_escaped(text.lower())}%"
            stmt = stmt.where(
                or_(
                    func.lower(Case.subject).like(pattern, escape="\\"),
                    Case.requester.like(pattern, escape="\\"),
                )
            )
    if filters.mine_for is not None:
        user = filters.mine_for
        stmt = stmt.where(Case.status == "open").where(
            or_(
                Case.assignee_id == user.id,
                and_(Case.assignee_id.is_(None), Case.queue == user.role),
                and_(
                    Case.assignee_id.is_(None),
                    Case.group_id.in_(
                        select(work_group_members.c.group_id).where(
                            work_group_members.c.user_id == user.id
                        )
                    ),
                ),
                cast(Case.approvers, String).like(f'%"{like_escaped(user.email)}"%', escape="\\"),
                # Unassigned work: anyone who works cases may take it.
                and_(
                    Case.assignee_id.is_(None),
                    Case.queue.is_(None),
                    Case.group_id.is_(None),
                    cast(Case.approvers, String) == "[]",
                ),
            )
        )
    return stmt


def queue_page(filters: QueueFilter, *, after: str = "", per_page: int = 25) -> QueuePage:
    """One page of the queue, newest first; `after` is the cursor of the previous page.

    Keyset pagination (WHERE (sort, id) < cursor) costs the same on page 1 and page 4,000.
    """
    column_name, descending = SORTS.get(filters.sort, SORTS["updated"])
    column = getattr(Case, column_name)
    stmt = _queue_statement(filters, utcnow())
    cursor = _parse_cursor(after)
    if cursor is not None:
        when, case_id = cursor
        # A row-value comparison, which both databases answer from the (…, sort, id) index.
        key = tuple_(column, Case.id)
        stmt = stmt.where(key < (when, case_id) if descending else key > (when, case_id))
    order = (column.desc(), Case.id.desc()) if descending else (column.asc(), Case.id.asc())
    rows = list(db.session.scalars(stmt.order_by(*order).limit(per_page + 1)))
    has_more = len(rows) > per_page
    items = rows[:per_page]
    next_cursor = ""
    if has_more and items:
        last = items[-1]
        next_cursor = f"{_micros(getattr(last, column_name))}_{last.id}"
    return QueuePage(items=items, next_cursor=next_cursor, has_more=has_more)


def queue_count(filters: QueueFilter, limit: int = 1000) -> int:
    """How many cases match, counted up to `limit` (beyond it the page says "more than")."""
    inner = _queue_statement(filters, utcnow()).with_only_columns(Case.id).limit(limit + 1)
    return db.session.scalar(select(func.count()).select_from(inner.subquery())) or 0


def _micros(when: datetime) -> int:
    return (when - EPOCH) // timedelta(microseconds=1)


def _parse_cursor(value: str) -> tuple[datetime, int] | None:
    """The (time, id) of a cursor, or None for a missing or mangled one (the first page)."""
    micros, _, case_text = value.partition("_")
    case_id = id_in(case_text)
    # Past year 9999 a time cannot be made.
    if case_id is None or not (micros.isascii() and micros.isdigit()):
        return None
    if int(micros) > _LAST_MICROSECOND:
        return None
    return EPOCH + timedelta(microseconds=int(micros)), case_id


def find_case(reference: str) -> Case | None:
    return db.session.scalar(select(Case).where(Case.reference == reference.strip().upper()))


def stage_names(definition: Definition) -> dict[str, str]:
    return {s.key: s.name for s in definition.stages}


def versions_in_use(case_type: CaseType) -> dict[int, int]:
    """Open cases per version number of a case type."""
    stmt = (
        select(CaseTypeVersion.number, func.count(Case.id))
        .join(Case, Case.version_id == CaseTypeVersion.id)
        .where(CaseTypeVersion.case_type_id == case_type.id, Case.status == "open")
        .group_by(CaseTypeVersion.number)
    )
    return {number: count for number, count in db.session.execute(stmt)}
