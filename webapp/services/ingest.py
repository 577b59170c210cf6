"""Ingesting a stored InboundMessage: filter, correlate, then open or update a case, once.

`plan` decides what a message would do and writes nothing (the rule tester shows it);
`ingest_message` claims the stored row, follows the plan and records the outcome on the row.
The claim is one conditional UPDATE (status still "received") run as the transaction's first
statement: a second worker ingesting the same message waits for the first one's commit and
then finds nothing to claim, on PostgreSQL (row lock) and on SQLite (database write lock).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import joinedload
from sqlalchemy.orm.exc import StaleDataError

from webapp.casetypes.templating import render
from webapp.extensions import db
from webapp.mail import routing
from webapp.mail.correlate import Correlation, Lookups, case_id_pattern, correlate, find_case_ids
from webapp.mail.filters import FilterOutcome, Limits, loop_breaker, screen
from webapp.mail.parse import ParsedMessage
from webapp.models import (
    Case,
    CaseAttachment,
    CaseEvent,
    CaseType,
    EmailAccount,
    EmailChannel,
    EmailListener,
    InboundMessage,
    InboundStatus,
    OutboundKind,
    OutboundMessage,
    ResolvedCasePolicy,
    RuleAction,
    ServiceEmailRule,
)
from webapp.models.types import utcnow
from webapp.services import cases as case_service
from webapp.services import channels as channel_service
from webapp.services.outbox import queue_message
from webapp.services.rules import MappedValue, map_fields

# The loop breaker: a sender (often another robot we failed to recognise) may open at most
# this many cases per window; more are quarantined for an admin to look at.
LOOP_LIMIT = 20
LOOP_WINDOW_MINUTES = 60
MAX_EVENT_TEXT = 5000
NO_SUBJECT = "(no subject)"

OPEN = "open"
JOIN = "join"
REOPEN = "reopen"
REPLY_CLOSED = "reply_closed"
IGNORE = "ignore"
QUARANTINE = "quarantine"
DUPLICATE = "duplicate"


# Outcomes not yet added to their listener's counters: (listener id, status) -> messages.
Tally = Counter[tuple[int, str]]


class IngestError(ValueError):
    """A message cannot be replayed or ingested as asked; the message says why."""


@dataclass(frozen=True)
class AttachmentPlan:
    filename: str
    content_type: str
    size: int
    kept: bool
    note: str = ""


@dataclass
class Plan:
    """What ingesting a message does, with every reason, before anything is written."""

    action: str  # OPEN, JOIN, REOPEN, REPLY_CLOSED, IGNORE, QUARANTINE, DUPLICATE
    reason: str = ""
    message: ParsedMessage | None = None
    filters: list[tuple[str, str]] = field(default_factory=list)
    correlation: str = ""
    case: Case | None = None  # the case joined, reopened, answered or linked (bounces)
    mapped: list[MappedValue] = field(default_factory=list)
    attachments: list[AttachmentPlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    routing: list[str] = field(default_factory=list)  # what the listener's channel matched
    rule: ServiceEmailRule | None = None  # the rule followed (from the listener or its channel)

    @property
    def status(self) -> str:
        if self.action == QUARANTINE:
            return InboundStatus.QUARANTINED.value
        if self.action in (IGNORE, DUPLICATE):
            return InboundStatus.IGNORED.value
        return InboundStatus.PROCESSED.value

    @property
    def sender(self) -> str:
        if self.message is None or not self.message.from_addresses:
            return ""
        return self.message.from_addresses[0][1].lower()

    @property
    def decisions(self) -> list[dict[str, str]]:
        steps = [{"step": name, "note": reason} for name, reason in self.filters]
        steps.extend({"step": "channel", "note": sentence} for sentence in self.routing)
        if self.correlation:
            steps.append({"step": "correlation", "note": self.correlation})
        steps.extend({"step": "note", "note": note} for note in self.notes)
        steps.append({"step": "outcome", "note": self.summary})
        return steps

    @property
    def summary(self) -> str:
        """One sentence for the admin: what happened (or would happen) and why."""
        reference = self.case.reference if self.case else ""
        if self.action == OPEN:
            return f"Opened {reference}." if reference else "Opens a new case."
        if self.action == JOIN:
            return f"Joins {reference} ({self.correlation})."
        if self.action == REOPEN:
            return f"Reopens the resolved case {reference} and joins it ({self.correlation})."
        if self.action == REPLY_CLOSED:
            return f"{reference} is resolved: the sender is told that the case is closed."
        return self.reason


def plan(
    raw: bytes,
    rule: ServiceEmailRule | None,
    *,
    limits: Limits | None = None,
    account_id: int | None = None,
    inbound_id: int | None = None,
    channel: EmailChannel | None = None,
) -> Plan:
    """What ingesting `raw` with `rule` (or routed by `channel`) does; writes nothing."""
    screened = screen(raw, limits)
    outcome: FilterOutcome = screened.outcome
    message = screened.message
    result = Plan(action=OPEN, message=message, filters=list(outcome.fired))
    if message is None or outcome.action == "quarantine":
        result.action = QUARANTINE
        result.reason = _reasons(outcome) or "The message could not be read."
        return result
    if outcome.action == "ignore_automatic":
        result.action = IGNORE
        result.reason = f"Automatic mail, no case and no answer: {_reasons(outcome)}"
        return result
    if outcome.action == "bounce":
        result.action = IGNORE
        result.case, result.correlation = _bounced_case(message, outcome.original_message_id)
        result.reason = f"A bounce, no case and no answer: {_reasons(outcome)}"
        return result
    # Only a stored message can be a copy of another (the rule tester's upload is not stored).
    duplicate = _earlier_copy(message, account_id, inbound_id) if inbound_id else None
    if duplicate is not None:
        result.action = DUPLICATE
        result.reason = (
            f"A copy of message #{duplicate.id} (same Message-ID), which was already processed."
        )
        return result
    if channel is not None:
        rule = _route(result, channel, message)
        if result.action != OPEN:
            return result
    result.rule = rule
    found = _correlate(message)
    result.correlation = found.description
    if rule is None:
        result.action = QUARANTINE
        result.reason = (
            "No service email rule handles this message: give its listener a rule "
            "(mail from the intake needs --listener), then replay it."
        )
        return result
    if found.case is not None:
        result.case = found.case
        if found.case.status == "open":
            result.action = JOIN
        elif rule.resolved_policy == ResolvedCasePolicy.REOPEN.value:
            result.action = REOPEN
        elif rule.resolved_policy == ResolvedCasePolicy.REPLY_CLOSED.value:
            result.action = REPLY_CLOSED
        else:
            result.notes.append(f"{found.case.reference} is resolved: the rule opens a new case.")
            result.case = None
    if result.action == OPEN and rule.action == RuleAction.UPDATE_CASE.value:
        result.action = QUARANTINE
        result.reason = "No case matched this message, and its rule only updates cases."
        return result
    if result.action in (OPEN, JOIN, REOPEN):
        result.attachments = _attachments(message, rule)
    if result.action != OPEN:
        return result
    result.mapped = map_fields(rule, message)
    problems = [m.error for m in result.mapped if m.error]
    if problems:
        result.action = QUARANTINE
        result.reason = "A mapped field does not fit: " + " ".join(problems)
        return result
    breaker = loop_breaker(
        result.sender or None,
        _cases_opened_by(result.sender),
        limit=LOOP_LIMIT,
        window_minutes=LOOP_WINDOW_MINUTES,
    )
    if breaker is not None:
        result.filters.append((breaker.filter, breaker.reason))
        result.action = QUARANTINE
        result.reason = f"Loop breaker: {breaker.reason}"
    return result


def ingest_message(inbound_id: int, tally: Tally | None = None) -> InboundMessage | None:
    """Ingest one stored message (flushes; the caller commits); None when not ours to do.

    Raises IngestError, after rolling back, when its case changed at the same moment.
    With `tally` the outcome is added to it instead of to the listener's counters, for the
    caller to write once per batch with `count_outcomes`.

    A message that is not in "received" (already processed, ignored or quarantined, or being
    ingested by another worker right now) is left alone.
    """
    claimed = _claim(inbound_id)
    if not claimed:
        return None
    inbound = db.session.get(InboundMessage, inbound_id, populate_existing=True)
    assert inbound is not None  # claimed just now, in this transaction
    # The rule, its case type's published versions and the channel come in the same round
    # trip: every message needs them, and lazy loading would cost a query each.
    listener = (
        db.session.get(
            EmailListener,
            inbound.listener_id,
            options=[
                joinedload(EmailListener.rule)
                .joinedload(ServiceEmailRule.case_type)
                .joinedload(CaseType.versions),
                joinedload(EmailListener.channel),
            ],
        )
        if inbound.listener_id
        else None
    )
    limits = Limits(max_size=listener.max_message_bytes) if listener else None
    result = plan(
        inbound.raw,
        listener.rule if listener else None,
        limits=limits,
        account_id=inbound.account_id,
        inbound_id=inbound.id,
        channel=listener.channel if listener else None,
    )
    rule = result.rule
    try:
        if rule is not None and result.action in (OPEN, JOIN, REOPEN, REPLY_CLOSED):
            account = (
                db.session.get(EmailAccount, inbound.account_id) if inbound.account_id else None
            )
            _carry_out(result, rule, account)
        _record(inbound, result)
        if listener is not None:
            _count(listener.id, result.status, tally)
            _tell_sender(listener, result)
        db.session.flush()
    except (case_service.AlreadyProcessed, StaleDataError):
        # Someone changed the case at the same moment: nothing of this attempt is kept and
        # the message stays as it was, to be ingested again.
        db.session.rollback()
        raise IngestError(
            f"The case of message #{inbound_id} was changed at the same time; try again."
        ) from None
    except case_service.CaseError as exc:
        db.session.rollback()
        return _quarantine_after_rollback(inbound_id, str(exc), result, tally)
    return inbound


def replay(inbound_id: int) -> InboundMessage:
    """Put a quarantined message back to "received" and ingest it again; raises IngestError.

    On IngestError the session was rolled back: the message is still quarantined.
    """
    inbound = db.session.get(InboundMessage, inbound_id)
    if inbound is None:
        raise IngestError(f"There is no incoming message #{inbound_id}.")
    if inbound.status != InboundStatus.QUARANTINED.value:
        raise IngestError(
            f"Message #{inbound_id} is {inbound.status}; only quarantined messages are replayed."
        )
    inbound.status = InboundStatus.RECEIVED.value
    inbound.status_reason = ""
    db.session.flush()
    ingested = ingest_message(inbound_id)
    if ingested is None:
        raise IngestError(f"Message #{inbound_id} is being ingested already.")
    return ingested


def quarantine_failed(inbound_id: int, error: BaseException) -> None:
    """Quarantine a message whose ingest failed unexpectedly (after the caller's rollback)."""
    reason = (
        f"Ingesting failed unexpectedly ({type(error).__name__}); the error was logged. "
        "Replay the message once the cause is fixed."
    )
    db.session.execute(
        update(InboundMessage)
        .where(
            InboundMessage.id == inbound_id,
            InboundMessage.status == InboundStatus.RECEIVED.value,
        )
        .values(
            status=InboundStatus.QUARANTINED.value,
            status_reason=reason,
            attempts=InboundMessage.attempts + 1,
            processed_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )


def stuck_message_ids(older_than: timedelta, limit: int = 1000) -> list[int]:
    """Messages still waiting in "received" after `older_than`, oldest first."""
    cutoff = utcnow() - older_than
    return list(
        db.session.scalars(
            select(InboundMessage.id)
            .where(
                InboundMessage.status == InboundStatus.RECEIVED.value,
                InboundMessage.received_at < cutoff,
            )
            .order_by(InboundMessage.id)
            .limit(limit)
        )
    )


def _route(result: Plan, channel: EmailChannel, message: ParsedMessage) -> ServiceEmailRule | None:
    """Follow the channel: the rule to apply, or set the plan to ignore or quarantine.

    In all-matches mode the first route that opens cases (a rule or a case type) is followed
    and the other matches are only recorded; ignore or quarantine apply when none opens cases.
    """
    try:
        routed = channel_service.route(channel, message)
    except channel_service.ChannelError as exc:
        result.action = QUARANTINE
        result.reason = str(exc)
        return None
    result.routing = [match.sentence for match in routed.matches]
    if not routed.matches:
        result.action = QUARANTINE
        result.reason = f"No route of the channel {channel.name} matched, and it has no default."
        return None
    creating = [
        m for m in routed.matches if m.route.target_kind in (routing.RULE, routing.CASE_TYPE)
    ]
    chosen = creating[0] if creating else routed.matches[0]
    for match in routed.matches:
        if match is not chosen:
            result.notes.append(f"Also matched, not followed: {match.sentence}")
    target = chosen.route
    if target.target_kind == routing.IGNORE:
        result.action = IGNORE
        result.reason = f"Ignored by the channel {channel.name}: {chosen.sentence}"
        return None
    if target.target_kind == routing.QUARANTINE:
        result.action = QUARANTINE
        result.reason = f"Quarantined by the channel {channel.name}: {chosen.sentence}"
        return None
    if target.target_kind == routing.RULE:
        rule = db.session.get(ServiceEmailRule, target.target_id)
        if rule is None:
            result.action = QUARANTINE
            result.reason = f"The rule of the channel {channel.name}'s route no longer exists."
        return rule
    # A case type alone: open cases of it with no field mappings (replies still join).
    return ServiceEmailRule(
        name=f"{channel.name}: {target.target_label}",
        action=RuleAction.CREATE_CASE.value,
        case_type_id=target.target_id,
        field_mappings=[],
        stage_action="",
        resolved_policy=ResolvedCasePolicy.NEW_CASE.value,
        send_ack=False,
        ack_subject="",
        ack_body="",
        max_attachment_bytes=10 * 1024 * 1024,
        max_attachments=20,
    )


# Carrying out a plan ------------------------------------------------------------------------


def _carry_out(result: Plan, rule: ServiceEmailRule, account: EmailAccount | None) -> None:
    message = result.message
    assert message is not None  # only plans of parsed messages get here
    if result.action == OPEN:
        case_type = db.session.get(CaseType, rule.case_type_id) if rule.case_type_id else None
        if case_type is None:
            raise case_service.CaseError("The rule's case type no longer exists.")
        values = {m.field: m.value for m in result.mapped if m.value}
        subject = " ".join(message.subject.split())[:300] or NO_SUBJECT
        result.case = case_service.open_case(
            case_type,
            values,
            subject=subject,
            requester=result.sender,
            user=None,
            channel="email",
            require_fields=False,
            email_account=account,
        )
        # A case opened just now was last updated just now: no second write to its row.
        _email_event(result.case, result.sender, message, touch=False)
        _store_attachments(result.case, result.attachments, message)
        if rule.send_ack and rule.ack_subject:
            _queue_mail(
                result.case,
                OutboundKind.ACKNOWLEDGEMENT,
                result.sender,
                rule.ack_subject,
                rule.ack_body,
                message,
            )
            result.notes.append(f"An acknowledgement to {result.sender} was queued.")
        return
    case = result.case
    assert case is not None  # the other actions all have a case
    if result.action == REPLY_CLOSED:
        _queue_mail(
            case,
            OutboundKind.ANSWER,
            result.sender,
            "Re: {{ subject }}",
            "Your message about {{ case_id }} was not added: the case is closed. "
            "Write a new message to open a new case.",
            message,
        )
        return
    if result.action == REOPEN:
        case_service.reopen_case(case, user=None, channel="email", comment="A new email arrived.")
    _email_event(case, result.sender, message)
    _store_attachments(case, result.attachments, message)
    if rule.stage_action and case.status == "open":
        try:
            case_service.apply_action(case, rule.stage_action, user=None, channel="email")
        except case_service.AlreadyProcessed:
            raise
        except case_service.CaseError as exc:
            # The message is on the timeline already; the action is for a person to take.
            result.notes.append(f"The stage action {rule.stage_action} was not run: {exc}")
        else:
            result.notes.append(f"Ran the stage action {rule.stage_action}.")


def _email_event(case: Case, sender: str, message: ParsedMessage, *, touch: bool = True) -> None:
    text = message.text.strip()
    body = f"Subject: {message.subject or NO_SUBJECT}\n\n{text}"
    db.session.add(
        CaseEvent(
            case=case,
            kind="email",
            actor=sender[:320],
            channel="email",
            action="Email in",
            comment=body[:MAX_EVENT_TEXT],
            created_at=utcnow(),
        )
    )
    if touch:
        case.updated_at = utcnow()


def _store_attachments(case: Case, planned: list[AttachmentPlan], message: ParsedMessage) -> None:
    for item, attachment in zip(planned, message.attachments, strict=True):
        if not item.kept:
            continue
        db.session.add(
            CaseAttachment(
                case=case,
                filename=item.filename,
                content_type=item.content_type,
                size=item.size,
                data=attachment.content,
            )
        )


def _queue_mail(
    case: Case, kind: OutboundKind, to: str, subject: str, body: str, answered: ParsedMessage
) -> None:
    values = {name: str(value) for name, value in (case.fields or {}).items()}
    values.update(case_id=case.reference, subject=case.subject, requester=case.requester)
    queue_message(
        case,
        kind=kind,
        recipients=[to],
        subject=render(subject, values),
        body=render(body, values),
        in_reply_to=answered.message_id,
        references=[*answered.references, answered.message_id] if answered.message_id else (),
    )


def _record(inbound: InboundMessage, result: Plan) -> None:
    inbound.status = result.status
    inbound.status_reason = result.summary
    inbound.case_id = result.case.id if result.case else None
    inbound.correlation = result.correlation
    inbound.decisions = result.decisions
    inbound.processed_at = utcnow()


def _quarantine_after_rollback(
    inbound_id: int, reason: str, result: Plan, tally: Tally | None
) -> InboundMessage:
    claimed = _claim(inbound_id)
    inbound = db.session.get(InboundMessage, inbound_id, populate_existing=True)
    assert inbound is not None and claimed
    result.action = QUARANTINE
    result.reason = reason
    result.case = None
    _record(inbound, result)
    if inbound.listener_id is not None:
        _count(inbound.listener_id, result.status, tally)
        listener = db.session.get(EmailListener, inbound.listener_id)
        if listener is not None:
            _tell_sender(listener, result)
    db.session.flush()
    return inbound


def _tell_sender(listener: EmailListener, result: Plan) -> None:
    """Queue the listener's error email for a quarantined message, when it has one."""
    if result.action != QUARANTINE or not listener.send_error_email or not result.sender:
        return
    if any(name == "loop_breaker" for name, _ in result.filters):
        return  # answering a sender that writes in a loop would feed the loop
    message = result.message
    subject = message.subject if message else ""
    answered = message.message_id if message else None
    queue_message(
        None,
        kind=OutboundKind.ERROR,
        account=listener.account,
        recipients=[result.sender],
        subject=f"Not processed: {subject or NO_SUBJECT}",
        # The reason can name internal settings, so the sender gets a plain sentence only.
        body=(
            f'Your message "{subject or NO_SUBJECT}" could not be processed automatically. '
            "It has been kept, and an administrator will look at it."
        ),
        in_reply_to=answered,
        references=[*message.references, answered] if message and answered else (),
    )


def _claim(inbound_id: int) -> bool:
    """Count an attempt on the message if it is still waiting; whether it was."""
    result = db.session.execute(
        update(InboundMessage)
        .where(
            InboundMessage.id == inbound_id,
            InboundMessage.status == InboundStatus.RECEIVED.value,
        )
        .values(attempts=InboundMessage.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    return bool(cast(CursorResult[Any], result).rowcount)


def count_outcomes(tally: Tally) -> None:
    """Add a batch's outcomes to the listeners' counters (flushes; the caller commits)."""
    for listener_id in sorted({listener_id for listener_id, _ in tally}):
        processed = tally[(listener_id, InboundStatus.PROCESSED.value)]
        processed += tally[(listener_id, InboundStatus.IGNORED.value)]
        quarantined = tally[(listener_id, InboundStatus.QUARANTINED.value)]
        db.session.execute(
            update(EmailListener)
            .where(EmailListener.id == listener_id)
            .values(
                processed_count=EmailListener.processed_count + processed,
                quarantined_count=EmailListener.quarantined_count + quarantined,
            )
            .execution_options(synchronize_session=False)
        )
    tally.clear()


def _count(listener_id: int, status: str, tally: Tally | None) -> None:
    if tally is not None:
        tally[(listener_id, status)] += 1
        return
    column = (
        EmailListener.quarantined_count
        if status == InboundStatus.QUARANTINED.value
        else EmailListener.processed_count
    )
    db.session.execute(
        update(EmailListener)
        .where(EmailListener.id == listener_id)
        .values({column: column + 1})
        .execution_options(synchronize_session=False)
    )


# Reading ------------------------------------------------------------------------------------


def _reasons(outcome: FilterOutcome) -> str:
    return " ".join(reason for _, reason in outcome.fired)


def _attachments(message: ParsedMessage, rule: ServiceEmailRule) -> list[AttachmentPlan]:
    planned: list[AttachmentPlan] = []
    kept = 0
    for attachment in message.attachments:
        name = (attachment.filename or "attachment")[:255]
        content_type = (attachment.content_type or "application/octet-stream")[:100]
        note = ""
        if attachment.size == 0:
            note = "empty"
        elif attachment.size > rule.max_attachment_bytes:
            note = f"larger than the rule's limit of {rule.max_attachment_bytes} bytes"
        elif kept >= rule.max_attachments:
            note = f"more than the rule's {rule.max_attachments} attachments"
        if not note:
            kept += 1
        planned.append(AttachmentPlan(name, content_type, attachment.size, not note, note))
    return planned


def _lookups() -> Lookups[Case]:
    return Lookups(
        # Our outgoing mail carries no reply tokens yet, so none can match.
        by_reply_token=lambda token: None,
        by_message_ids=_cases_by_message_ids,
        by_case_id=case_service.find_case,
    )


def _correlate(message: ParsedMessage) -> Correlation[Case]:
    prefixes = db.session.scalars(select(CaseType.prefix))
    return correlate(message, _lookups(), subject_pattern=case_id_pattern(list(prefixes)))


def _cases_by_message_ids(message_ids: Any) -> dict[str, Case]:
    """Cases by the Message-IDs of messages they received or sent."""
    wanted = list(message_ids)
    received = db.session.execute(
        select(InboundMessage.message_id, Case)
        .join(Case, Case.id == InboundMessage.case_id)
        .where(InboundMessage.message_id.in_(wanted))
    )
    sent = db.session.execute(
        select(OutboundMessage.message_id, Case)
        .join(Case, Case.id == OutboundMessage.case_id)
        .where(OutboundMessage.message_id.in_(wanted))
    )
    return {message_id: case for message_id, case in [*received, *sent] if message_id}


def _bounced_case(message: ParsedMessage, original: str | None) -> tuple[Case | None, str]:
    if original:
        case = _cases_by_message_ids([original]).get(original)
        if case is not None:
            return case, f"bounce of {original}, a message of {case.reference}"
    for embedded in message.embedded:
        for reference in find_case_ids(embedded.get("Subject") or ""):
            case = case_service.find_case(reference)
            if case is not None:
                return case, f"bounce of a message about {case.reference} (returned subject)"
    return None, "bounce of a message we do not know" if original else ""


def _earlier_copy(
    message: ParsedMessage, account_id: int | None, inbound_id: int
) -> InboundMessage | None:
    if not message.message_id:
        return None
    stmt = select(InboundMessage).where(
        InboundMessage.message_id == message.message_id,
        InboundMessage.status == InboundStatus.PROCESSED.value,
        InboundMessage.account_id.is_(None)
        if account_id is None
        else InboundMessage.account_id == account_id,
    )
    return db.session.scalars(stmt.where(InboundMessage.id != inbound_id).limit(1)).first()


def _cases_opened_by(sender: str) -> int:
    if not sender:
        return 0
    cutoff = utcnow() - timedelta(minutes=LOOP_WINDOW_MINUTES)
    return (
        db.session.scalar(
            select(func.count(Case.id))
            .join(CaseEvent, CaseEvent.case_id == Case.id)
            .where(
                Case.requester == sender,
                Case.created_at >= cutoff,
                CaseEvent.kind == "created",
                CaseEvent.channel == "email",
            )
        )
        or 0
    )
