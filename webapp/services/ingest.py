"""Ingesting a stored InboundMessage: filter, correlate, then open or update a case, once.

`plan` decides what a message would do and writes nothing (the rule tester shows it);
`ingest_message` claims the stored row, follows the plan and records the outcome on the row.
The claim is one conditional UPDATE (status still "received") run as the transaction's first
write: a second worker ingesting the same message waits for the first one's commit and then
finds nothing to claim, on PostgreSQL (row lock) and on SQLite (database write lock).

`ingest_batch` does the same for a job's batch in one transaction: it parses the messages
before it claims them (outside the write lock), claims them with one UPDATE, reads once what
they all need (prefixes, processed Message-IDs, loop-breaker counts), then ingests them
together in one savepoint whose rows are written together at its end (new cases, their events
and attachments in a few multi-row statements). When any message fails, that pass is
rolled back and the batch goes again with a savepoint per message, so a failure undoes only
its own message: it is quarantined with the reason, or left "received" to be tried again.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Table,
    bindparam,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, BIGINT
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import SessionTransaction, joinedload
from sqlalchemy.orm.exc import StaleDataError

from webapp.casetypes.definition import slugify
from webapp.casetypes.templating import render
from webapp.extensions import db
from webapp.mail import routing
from webapp.mail.correlate import (
    Correlation,
    Lookups,
    answered_ids,
    case_id_pattern,
    correlate,
    find_case_ids,
    find_reply_tokens,
)
from webapp.mail.filters import FilterOutcome, Limits, Screened, loop_breaker, screen
from webapp.mail.parse import ParsedMessage
from webapp.models import (
    Approval,
    Case,
    CaseAttachment,
    CaseEvent,
    CaseType,
    EmailAccount,
    EmailChannel,
    EmailListener,
    InboundMessage,
    InboundRaw,
    InboundStatus,
    OutboundKind,
    OutboundMessage,
    ResolvedCasePolicy,
    RuleAction,
    ServiceEmailRule,
)
from webapp.models.storage import assign_ids
from webapp.models.types import utcnow
from webapp.services import approvals as approval_service
from webapp.services import cases as case_service
from webapp.services import channels as channel_service
from webapp.services.outbox import queue_message
from webapp.services.rules import MappedValue, map_fields, stale_mappings
from webapp.services.turns import hold_row

# The loop breaker: a sender (often another robot we failed to recognise) may open at most
# this many cases per window; more are quarantined for an admin to look at.
LOOP_LIMIT = 20
LOOP_WINDOW_MINUTES = 60
MAX_EVENT_TEXT = 5000
# Message-IDs looked up per statement (SQLite builds before 3.32 take at most 999 parameters).
_IDS_PER_QUERY = 500
NO_SUBJECT = "(no subject)"

OPEN = "open"
JOIN = "join"
REOPEN = "reopen"
REPLY_CLOSED = "reply_closed"
IGNORE = "ignore"
QUARANTINE = "quarantine"
DUPLICATE = "duplicate"
DECIDE = "decide"  # a reply to an approval request


# Outcomes not yet added to their listener's counters: (listener id, status) -> messages.
Tally = Counter[tuple[int, str]]

log = logging.getLogger(__name__)

# What every message of a listener needs, loaded with it: its rule, the rule's case type with
# its published versions, and its channel (built once: a message would pay for building it).
_LISTENER_LOADS = (
    joinedload(EmailListener.rule)
    .joinedload(ServiceEmailRule.case_type)
    .joinedload(CaseType.versions),
    joinedload(EmailListener.channel),
)


class IngestError(ValueError):
    """A message cannot be replayed or ingested as asked; the message says why."""


class Redo(Exception):
    """A batch's optimistic pass met a message that needs a savepoint of its own."""


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
    approval: Approval | None = None  # the approval request a DECIDE reply answers

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
        if self.not_kept and self.action in (OPEN, JOIN, REOPEN):  # the case gets the others
            steps.append({"step": "attachments", "note": self.not_kept})
        steps.append({"step": "outcome", "note": self.summary})
        return steps

    @property
    def not_kept(self) -> str:
        """One sentence on the attachments the rule does not keep, or ""."""
        by_reason: dict[str, list[str]] = {}
        for item in self.attachments:
            if not item.kept:
                by_reason.setdefault(item.note, []).append(item.filename)
        said = []
        for reason, names in by_reason.items():
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            count = f"{len(names)} attachment" + ("s" if len(names) > 1 else "")
            said.append(f"{count} not kept, {reason}: {shown}")
        return "; ".join(said) + "." if said else ""

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
    raw: bytes | Screened,
    rule: ServiceEmailRule | None,
    *,
    limits: Limits | None = None,
    account_id: int | None = None,
    inbound_id: int | None = None,
    channel: EmailChannel | None = None,
    batch: Batch | None = None,
    without_listener: bool = False,
) -> Plan:
    """What ingesting `raw` with `rule` (or routed by `channel`) does; writes nothing.

    `raw` may be screened already (a batch parses its messages before it takes the write
    lock); `batch` answers the lookups its messages share from what it read once.
    """
    screened = raw if isinstance(raw, Screened) else screen(raw, limits)
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
    duplicate = _earlier_copy(message, account_id, inbound_id, batch) if inbound_id else None
    if duplicate is not None:
        result.action = DUPLICATE
        result.reason = (
            f"A copy of message #{duplicate} (same Message-ID), which was already processed."
        )
        return result
    found = _correlate(message, batch)
    if found.method == "reply_token":
        # A reply to an approval request is a decision attempt, never a new case, whatever
        # the listener's rule or channel does with other mail.
        result.action = DECIDE
        result.case = found.case
        result.correlation = found.description
        result.approval = approval_service.find_by_token(found.key or "")
        result.reason = approval_service.describe_reply(result.approval)
        return result
    if channel is not None:
        rule = _route(result, channel, message, found if _answers(found, result.sender) else None)
        if result.action != OPEN:
            return result
    result.rule = rule
    result.correlation = found.description
    if rule is None and without_listener:
        result.action = QUARANTINE
        result.reason = (
            "This message has no listener (it came in without one, or its listener was "
            "deleted), so no rule handles it: download it and hand it to a listener with "
            "flask mail ingest --listener ID < message.eml."
        )
        return result
    if rule is None:
        result.action = QUARANTINE
        result.reason = (
            "No service email rule handles this message: give its listener a rule, then replay it."
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
    stale = stale_mappings(rule)
    if stale:
        result.notes.append(
            f"The rule {rule.name} maps {', '.join(stale)}, which the case type no longer "
            "has: no value was kept for it. Edit the rule's field mappings."
        )
    # Said here, as opening the case would say it, so that the rule tester shows it too.
    if case_service.requester_problem(result.sender):
        result.action = QUARANTINE
        address = (
            "is longer than 320 characters"
            if len(result.sender) > 320
            else f"{result.sender} is not a full email address (such as name@example.com)"
        )
        result.reason = f"The sender's address {address}, so no case can name it as requester."
        return result
    breaker = loop_breaker(
        result.sender or None,
        _cases_opened_by(result.sender, batch),
        limit=LOOP_LIMIT,
        window_minutes=LOOP_WINDOW_MINUTES,
    )
    if breaker is not None:
        result.filters.append((breaker.filter, breaker.reason))
        result.action = QUARANTINE
        result.reason = f"Loop breaker: {breaker.reason}"
    return result


def ingest_message(
    inbound_id: int,
    tally: Tally | None = None,
    *,
    batch: Batch | None = None,
    proof: str | None = None,
) -> InboundMessage | None:
    """Ingest one stored message (flushes; the caller commits); None when not ours to do.

    Raises IngestError, after rolling back, when its case changed at the same moment.
    With `tally` the outcome is added to it instead of to the listener's counters, for the
    caller to write once per batch with `count_outcomes`.

    A message that is not in "received" (already processed, ignored or quarantined, or being
    ingested by another worker right now) is left alone. Within `ingest_batch` the message
    was claimed with its batch and runs in a savepoint: rolling back undoes only its writes.
    `proof` is what `sender_proofs` said of the message (a batch keeps its own).
    """
    inbound = batch.claimed.get(inbound_id) if batch is not None else _claim_one(inbound_id)
    if inbound is None:
        return None
    # The rule, its case type's published versions and the channel come in the same round
    # trip: every message needs them, and lazy loading would cost a query each.
    listener = (
        db.session.get(EmailListener, inbound.listener_id, options=_LISTENER_LOADS)
        if inbound.listener_id
        else None
    )
    limits = Limits(max_size=listener.max_message_bytes) if listener else None
    result = plan(
        batch.take_screened(inbound) if batch is not None else inbound.raw,
        listener.rule if listener else None,
        limits=limits,
        account_id=inbound.account_id,
        inbound_id=inbound.id,
        channel=listener.channel if listener else None,
        batch=batch,
        without_listener=listener is None,
    )
    rule = result.rule
    try:
        if result.action == DECIDE and result.approval and result.message:
            result.reason = approval_service.apply_reply(
                inbound,
                result.message,
                result.approval,
                proof=batch.proofs.get(inbound.id) if batch is not None else proof,
            )
        if rule is not None and result.action in (OPEN, JOIN, REOPEN, REPLY_CLOSED):
            account = None
            if inbound.account_id is not None:
                account = (batch.accounts.get(inbound.account_id) if batch else None) or (
                    db.session.get(EmailAccount, inbound.account_id)
                )
            _carry_out(result, rule, account, batch)
        _record(inbound, result)
        if batch is not None and result.case is not None and not result.case.reference:
            batch.naming.append((inbound, result))  # recorded again once it is numbered
        if listener is not None:
            _count(listener.id, result.status, tally)
            _tell_sender(listener, result)
        if batch is None or not batch.optimistic:
            db.session.flush()
    except (case_service.AlreadyProcessed, StaleDataError):
        # Someone changed the case at the same moment: nothing of this attempt is kept and
        # the message stays as it was, to be ingested again.
        _roll_back(batch)
        raise IngestError(
            f"The case of message #{inbound_id} was changed at the same time; try again."
        ) from None
    except case_service.CaseError as exc:
        _roll_back(batch)
        return _quarantine_after_rollback(
            inbound_id, str(exc), result, tally, claimed=batch is not None
        )
    if batch is not None:
        batch.remember(inbound, result)
    return inbound


@dataclass
class Batch:
    """The claimed messages of one batch and what they share, read once for the batch.

    `plan` looks here instead of querying for each message: the case id prefixes, the
    Message-IDs processed already (the duplicate check) and how many cases each sender opened
    in the loop breaker's window. Each message that succeeds is added, so that the later
    messages of the batch see it as they would see it in the database.
    """

    claimed: dict[int, InboundMessage] = field(default_factory=dict)
    screened: dict[int, Screened] = field(default_factory=dict)
    subject_pattern: re.Pattern[str] | None = None
    processed: dict[tuple[int | None, str], int] = field(default_factory=dict)
    opened: Counter[str] = field(default_factory=Counter)
    # Cases of the batch by the Message-IDs of its messages, for replies within the batch.
    threads: dict[str, Case] = field(default_factory=dict)
    # Cases by the Message-IDs the batch's messages answer, as stored before the batch.
    answered: dict[str, Case] = field(default_factory=dict)
    # In the optimistic pass messages share one savepoint and are flushed together.
    optimistic: bool = False
    # Rows of new cases (email events, attachments) inserted together once the cases have ids.
    rows: list[tuple[type[CaseEvent] | type[CaseAttachment], Case, dict[str, Any]]] = field(
        default_factory=list
    )
    # The optimistic pass's new cases without their numbers yet, in the order they opened;
    # the messages whose outcome names one of them (recorded again once it is numbered), and
    # what waits for the numbers (acknowledgements show the case's reference).
    unnumbered: list[Case] = field(default_factory=list)
    naming: list[tuple[InboundMessage, Plan]] = field(default_factory=list)
    after_numbers: list[Callable[[], None]] = field(default_factory=list)
    # The case types the batch's listeners may open cases of; their counter rows are locked
    # together, before the batch writes anything else (`lock_counters`).
    case_types: set[int] = field(default_factory=set)
    counters_locked: bool = False
    # What approval_service.sender_proof said about replies with a reply token, by message.
    proofs: dict[int, str] = field(default_factory=dict)
    # The accounts the messages arrived through, read once: a read per message would flush
    # the pass's writes, and with them lock the counter rows, from its second message on.
    accounts: dict[int, EmailAccount] = field(default_factory=dict)

    def take_screened(self, inbound: InboundMessage) -> Screened | bytes:
        """The message as screened before the claim (its raw bytes if it was not)."""
        screened = self.screened.get(inbound.id)
        return screened if screened is not None else inbound.raw

    def number_cases(self) -> None:
        """Number the pass's new cases, and record again the outcome of the messages that
        name them (the ones that opened or joined them). From here to the commit the counter
        rows of the batch's case types are locked: another worker numbers its cases of those
        types after."""
        self.lock_counters()
        if self.unnumbered:
            case_service.number_cases(self.unnumbered)
            self.unnumbered.clear()
        for inbound, result in self.naming:
            _record(inbound, result)
        self.naming.clear()

    def lock_counters(self) -> None:
        """Lock the counter rows of every case type the batch may open cases of, once, before
        the batch writes a case or takes a number: workers then take these locks first and
        in one order, and never wait for each other in a circle."""
        if not self.counters_locked:
            case_service.lock_counters(self.case_types)
            self.counters_locked = True

    def forget_unnumbered(self) -> None:
        """After the pass's savepoint was rolled back: its new cases are gone, and the
        counter rows locked since it began are free again."""
        self.unnumbered.clear()
        self.naming.clear()
        self.counters_locked = False

    def remember(self, inbound: InboundMessage, result: Plan) -> None:
        """Count what a message did, for the messages after it in the batch."""
        if result.status == InboundStatus.PROCESSED.value and inbound.message_id:
            self.processed.setdefault((inbound.account_id, inbound.message_id), inbound.id)
        if result.action == OPEN and result.sender:
            self.opened[result.sender] += 1
        if result.case is not None and inbound.message_id:
            self.threads[inbound.message_id] = result.case


def ingest_batch(
    inbound_ids: Sequence[int], *, before_claim: Callable[[], None] | None = None
) -> list[int]:
    """Ingest stored messages in the caller's one transaction (flushes; the caller commits).

    Returns the ids to try again in a new transaction: their case changed at the same moment.
    Raises OperationalError when the database fails; the caller rolls back and nothing is kept.

    Parsing and filtering, the costly pure part, run before the claim, so that another worker
    parses while this one holds the write lock (SQLite, from the claim to the commit). On
    PostgreSQL a case type's counter row is held only from the numbering of the batch's new
    cases, just before they are written (see `_ingest_together`).
    One conditional UPDATE claims the whole batch; the messages are then ingested together in
    one savepoint. A message that fails there is taken out and ingested in a savepoint of its
    own, so that it undoes only its own writes and is quarantined with the reason (or, when its
    case changed meanwhile, left waiting to be retried). Listener counters are written once.
    `before_claim` is called just before the first write (a worker waits for its turn there).
    """
    ids = list(dict.fromkeys(inbound_ids))
    waiting = _waiting(ids)
    if not waiting:
        return []
    listeners = _listeners({row.listener_id for row in waiting if row.listener_id is not None})
    batch = Batch(
        case_types=_case_types_opened(listeners.values()),
        accounts=_accounts({row.account_id for row in waiting if row.account_id is not None}),
    )
    for row in waiting:
        listener = listeners.get(row.listener_id) if row.listener_id is not None else None
        limits = Limits(max_size=listener.max_message_bytes) if listener else None
        batch.screened[row.id] = screen(row.raw, limits)
    _prove_senders(batch, waiting)
    del waiting

    if before_claim is not None:
        before_claim()
    claimed = db.session.scalars(
        update(InboundMessage)
        .where(InboundMessage.id.in_(ids), InboundMessage.status == InboundStatus.RECEIVED.value)
        .values(attempts=InboundMessage.attempts + 1)
        .returning(InboundMessage.id)
        .execution_options(synchronize_session=False)
    ).all()
    if not claimed:
        return []
    batch.claimed = {
        inbound.id: inbound
        for inbound in db.session.scalars(
            select(InboundMessage)
            .where(InboundMessage.id.in_(claimed))
            .execution_options(populate_existing=True)
        )
    }
    _hold_message_ids(batch)
    _read_shared(batch)
    tally = Tally()
    retry: list[int] = []
    pending = sorted(batch.claimed)
    while pending:
        at = _ingest_together(batch, pending, tally)
        if at is None:
            break
        if at == len(pending):
            # Writing them all failed, with no one message to blame: one at a time.
            retry += _ingest_one_by_one(batch, pending, tally)
            break
        # The messages before the one that failed went through: they go again together (one
        # at a time should even that fail), the failed one in a savepoint of its own, and the
        # rest together again.
        before, failed = pending[:at], pending[at]
        if before and _ingest_together(batch, before, tally) is not None:
            retry += _ingest_one_by_one(batch, before, tally)
        retry += _ingest_one_by_one(batch, [failed], tally)
        pending = pending[at + 1 :]
    count_outcomes(tally)
    return retry


def _waiting(ids: list[int]) -> Sequence[Any]:
    """(id, raw, listener_id, account_id) rows of the messages of `ids` still "received".

    On PostgreSQL they are read in the binary format: in the text format every byte of a raw
    message travels as two hex digits that the driver decodes back, 0.15 ms for a 30 KB
    message against 0.06 ms.
    """
    received = InboundStatus.RECEIVED.value
    connection = db.session.connection()
    if connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg":
        return _waiting_binary(connection, ids, received)
    return db.session.execute(
        select(
            InboundMessage.id,
            InboundRaw.raw,
            InboundMessage.listener_id,
            InboundMessage.account_id,
        )
        .join(InboundRaw, InboundRaw.id == InboundMessage.id)
        .where(InboundMessage.id.in_(ids), InboundMessage.status == received)
    ).all()


def _waiting_binary(connection: Connection, ids: list[int], received: str) -> Sequence[Any]:
    """`_waiting` through psycopg's own cursor, which can ask for binary results, in the
    session's transaction. Its errors are SQLAlchemy's, as those of any other statement: a
    connection the server dropped is invalidated and the error is an OperationalError, which
    the ingest job retries on a new connection."""
    import psycopg
    from psycopg.rows import namedtuple_row

    driver = connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    statement = (
        "SELECT m.id, r.raw, m.listener_id, m.account_id "
        "FROM inbound_messages m JOIN inbound_raw r ON r.id = m.id "
        "WHERE m.id = ANY(%s) AND m.status = %s"
    )
    parameters = (ids, received)
    try:
        with driver.cursor(binary=True, row_factory=namedtuple_row) as cursor:
            cursor.execute(statement, parameters)
            return cursor.fetchall()
    except psycopg.Error as exc:
        dropped = connection.dialect.is_disconnect(cast(Any, exc), connection.connection, None)
        if dropped:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            statement,
            parameters,
            exc,
            psycopg.Error,
            dialect=connection.dialect,
            connection_invalidated=dropped,
        ) from exc


def _prove_senders(batch: Batch, rows: Sequence[Any]) -> None:
    """Check, before the claim, the proof of the sender of each reply that carries a reply
    token, where its account requires one: the DKIM check may wait on DNS, and holding the
    write lock (SQLite) or the case counters (PostgreSQL) meanwhile would stop every other
    worker and the web pages that write."""
    replies = [
        (row.id, row.raw, message, row.account_id)
        for row in rows
        if (message := batch.screened[row.id].message) is not None
        and batch.screened[row.id].outcome.action == "accept"
    ]
    batch.proofs.update(sender_proofs(replies))


def sender_proofs(
    replies: Sequence[tuple[int, bytes, ParsedMessage, int | None]],
) -> dict[int, str]:
    """What approval_service.sender_proof says of each of (inbound id, raw bytes, message,
    account id) that a decision could come from: a reply token of an approval whose approver
    sent it, to an account that requires the proof. Others are not looked at, so that a
    made-up token costs no DNS lookups.

    A check that fails here is left out; the message is checked again while it is ingested,
    where a failure quarantines that message only.
    """
    candidates = [
        (inbound_id, raw, message, account_id, tokens)
        for inbound_id, raw, message, account_id in replies
        if account_id is not None
        and message.sender is not None
        and (tokens := [token for token, _ in find_reply_tokens(message)])
    ]
    if not candidates:
        return {}
    digests = {approval_service.token_digest(t) for *_, tokens in candidates for t in tokens}
    approvers = dict(
        db.session.execute(
            select(Approval.token_hash, Approval.approver).where(Approval.token_hash.in_(digests))
        ).all()
    )
    accounts = {
        account.id: account
        for account in db.session.scalars(
            select(EmailAccount).where(
                EmailAccount.id.in_({c[3] for c in candidates}),
                EmailAccount.require_authenticated_replies.is_(True),
            )
        )
    }
    proofs: dict[int, str] = {}
    for inbound_id, raw, message, account_id, tokens in candidates:
        account = accounts.get(account_id) if account_id is not None else None
        senders = {approvers.get(approval_service.token_digest(t)) for t in tokens}
        if account is None or message.sender not in senders:
            continue
        try:
            proof = approval_service.sender_proof(raw, message, account)
        except Exception:
            log.exception("the sender of inbound message %s could not be checked", inbound_id)
            continue
        if proof is not None:
            proofs[inbound_id] = proof
    return proofs


def _ingest_together(batch: Batch, ids: list[int], tally: Tally) -> int | None:
    """Ingest `ids` in one savepoint; None, or (keeping nothing) the position of the message
    that failed, len(ids) when the failure came while writing them all.

    The common case, where every message goes through, writes the rows together at the end
    (and wherever a query or a stage action flushes before it) instead of a savepoint and two
    flushes per message. The new cases are numbered just before they are
    written (`Batch.number_cases`, also from any flush before the end): the counter row of
    their case type, which stays locked until the commit, is not held while the messages are
    worked out, so another worker opening cases of the same type waits only for the writing.
    """
    processed, opened, threads = dict(batch.processed), Counter(batch.opened), dict(batch.threads)
    together = Tally()
    savepoint = db.session.begin_nested()
    batch.optimistic = True
    session = db.session()

    def number_first(*_: Any) -> None:
        batch.number_cases()  # locks the counters first, even when no case waits

    event.listen(session, "before_flush", number_first)
    at = 0
    try:
        for at, inbound_id in enumerate(ids):  # noqa: B007 - `at` is reported on failure
            ingest_message(inbound_id, together, batch=batch)
        at = len(ids)
        batch.number_cases()
        for step in batch.after_numbers:
            step()
        # The new cases take their ids in one query (PostgreSQL): see models.storage.
        assign_ids([obj for obj in db.session.new if isinstance(obj, Case) and obj.id is None])
        db.session.flush()
        _insert_rows(batch.rows)
        db.session.flush()
    except OperationalError:
        raise
    except Exception:
        # Redo, a changed case, or anything unexpected: the savepoint takes every write of
        # the pass back (the claim stays).
        _undo(savepoint)
        batch.processed, batch.opened, batch.threads = processed, opened, threads
        batch.forget_unnumbered()
        return at
    finally:
        event.remove(session, "before_flush", number_first)
        batch.optimistic = False
        batch.rows.clear()
        batch.after_numbers.clear()
    savepoint.commit()
    tally.update(together)
    return None


def _insert_rows(rows: list[tuple[type[Any], Case, dict[str, Any]]]) -> None:
    """Insert a batch's timeline entries and attachments, each row with its case's id, in one
    multi-row statement per table and set of columns. To the table: the ORM's bulk insert
    would process each row again for nothing these rows need."""
    groups: dict[tuple[Any, frozenset[str]], list[dict[str, Any]]] = {}
    for model, case, values in rows:
        groups.setdefault((model, frozenset(values)), []).append({**values, "case_id": case.id})
    for (model, _), group in groups.items():
        db.session.execute(insert(cast(Table, model.__table__)), group)


def _ingest_one_by_one(batch: Batch, ids: list[int], tally: Tally) -> list[int]:
    """Ingest each message in a savepoint of its own; the ids to retry."""
    batch.lock_counters()  # outside the messages' savepoints, whose rollback would free them
    retry: list[int] = []
    for inbound_id in ids:
        listener_id = batch.claimed[inbound_id].listener_id
        savepoint = db.session.begin_nested()
        try:
            ingest_message(inbound_id, tally, batch=batch)
            if savepoint.is_active:
                savepoint.commit()
        except IngestError as exc:
            _undo(savepoint)
            log.warning("inbound message %s: %s", inbound_id, exc)
            retry.append(inbound_id)
        except OperationalError:
            raise
        except Exception as exc:
            _undo(savepoint)
            log.exception("ingest of inbound message %s failed; quarantined", inbound_id)
            quarantine_failed(inbound_id, exc)
            if listener_id is not None:
                tally[(listener_id, InboundStatus.QUARANTINED.value)] += 1
    return retry


def _undo(savepoint: SessionTransaction) -> None:
    """Roll `savepoint` back unless that happened already.

    A failed flush leaves the savepoint inactive but still current: it must be rolled back
    before the session can go on, while one rolled back by `_roll_back` is closed.
    """
    if db.session().get_nested_transaction() is savepoint:
        savepoint.rollback()


def _case_types_opened(listeners: Iterable[EmailListener]) -> set[int]:
    """The case types whose cases mail of these listeners may open: their rules' (those that
    open cases), and every target of their channels."""
    rules: list[ServiceEmailRule | None] = []
    found: set[int] = set()
    for listener in listeners:
        rules.append(listener.rule)
        channel = listener.channel
        if channel is not None:
            rules.append(channel.default_rule)
            rules += [route.rule for route in channel.routes]
            found.update(
                type_id
                for type_id in (
                    channel.default_case_type_id,
                    *(route.case_type_id for route in channel.routes),
                )
                if type_id is not None
            )
    found.update(
        rule.case_type_id
        for rule in rules
        if rule is not None
        and rule.case_type_id
        and rule.action != RuleAction.UPDATE_CASE.value  # only updates: never opens a case
    )
    return found


def _accounts(ids: set[int]) -> dict[int, EmailAccount]:
    """The accounts of `ids`, read before the claim (as the listeners are), in one query."""
    if not ids:
        return {}
    stmt = select(EmailAccount).where(EmailAccount.id.in_(ids))
    return {account.id: account for account in db.session.scalars(stmt)}


def _listeners(ids: set[int]) -> dict[int, EmailListener]:
    """Listeners with their rule, its case type's versions and their channel, in one query."""
    if not ids:
        return {}
    stmt = select(EmailListener).where(EmailListener.id.in_(ids)).options(*_LISTENER_LOADS)
    return {listener.id: listener for listener in db.session.scalars(stmt).unique()}


# One lock per (account, Message-ID), taken in the order of the keys, held to the commit.
_HOLD_COPIES = text(
    "SELECT pg_advisory_xact_lock(k) FROM (SELECT unnest(:keys) AS k ORDER BY k) AS keys"
).bindparams(bindparam("keys", type_=ARRAY(BIGINT)))


def _hold_message_ids(batch: Batch) -> None:
    """PostgreSQL: hold, to the commit, a lock per (account, Message-ID) of the claimed
    messages, before the duplicate check reads which ones are processed already. Another
    copy of one of them, ingested by another worker at the same moment (a mail server's retry,
    two folders of one mailbox), waits for this commit, then finds this one processed and is
    ignored as a copy instead of opening a second case. Taken in one order, right after the
    claim and before any case or counter row: no two batches wait for each other in a circle.
    SQLite writes one batch at a time already."""
    pairs = []
    for inbound_id, inbound in batch.claimed.items():
        screened = batch.screened.get(inbound_id)
        message = screened.message if screened is not None else None
        pairs.append((inbound.account_id, message.message_id if message is not None else None))
    _hold_copies(pairs)


def _hold_copies(pairs: Iterable[tuple[int | None, str | None]]) -> None:
    """PostgreSQL: the locks of `_hold_message_ids` for these (account, Message-ID) pairs."""
    if db.session.get_bind().dialect.name != "postgresql":
        return
    keys = set()
    for account_id, message_id in pairs:
        if message_id:
            digest = hashlib.blake2b(f"{account_id}\n{message_id}".encode(), digest_size=8)
            keys.add(int.from_bytes(digest.digest(), "big", signed=True))
    if keys:
        db.session.execute(_HOLD_COPIES, {"keys": sorted(keys)})


def _read_shared(batch: Batch) -> None:
    """Read what the duplicate check, correlation and the loop breaker need for the batch."""
    batch.subject_pattern = _subject_pattern()
    messages = [s.message for s in batch.screened.values() if s.message is not None]
    answered = sorted({mid for m in messages for mid in answered_ids(m)})
    if answered:
        batch.answered = _cases_by_message_ids(answered)
    message_ids = sorted({m.message_id for m in messages if m.message_id})
    if message_ids:
        first = func.min(InboundMessage.id)
        processed = db.session.execute(
            select(InboundMessage.account_id, InboundMessage.message_id, first)
            .where(
                InboundMessage.message_id.in_(message_ids),
                InboundMessage.status == InboundStatus.PROCESSED.value,
            )
            .group_by(InboundMessage.account_id, InboundMessage.message_id)
        )
        batch.processed = {(account, mid): first for account, mid, first in processed if mid}
    senders = sorted({m.from_addresses[0][1].lower() for m in messages if m.from_addresses})
    if senders:
        cutoff = utcnow() - timedelta(minutes=LOOP_WINDOW_MINUTES)
        opened = db.session.execute(
            select(Case.requester, func.count(Case.id))
            .join(CaseEvent, CaseEvent.case_id == Case.id)
            .where(
                Case.requester.in_(senders),
                Case.created_at >= cutoff,
                CaseEvent.kind == "created",
                CaseEvent.channel == "email",
            )
            .group_by(Case.requester)
        )
        batch.opened.update({requester: number for requester, number in opened})


def replay(inbound_id: int) -> InboundMessage:
    """Put a quarantined message back to "received" and ingest it again; raises IngestError.

    On IngestError the session was rolled back: the message is still quarantined.
    """
    inbound = _quarantined(inbound_id)
    # The sender's proof may wait on DNS: checked before the replay writes anything.
    message = screen(inbound.raw).message
    reply = [(inbound.id, inbound.raw, message, inbound.account_id)] if message else []
    proofs = sender_proofs(reply)
    # Then the message is held, as a writer of it, and looked at again: of two replays at the
    # same moment (a double click, two admins) the second finds it replayed, not quarantined.
    db.session.rollback()
    hold_row(InboundMessage, inbound_id)
    try:
        inbound = _quarantined(inbound_id)
    except IngestError:
        db.session.rollback()
        raise
    # As a batch does: another copy being ingested at this moment is waited for, then seen.
    _hold_copies([(inbound.account_id, message.message_id if message is not None else None)])
    inbound.status = InboundStatus.RECEIVED.value
    inbound.status_reason = ""
    db.session.flush()
    # In a savepoint, as in a batch: a message that fails again (its case cannot be opened,
    # something unexpected) undoes only what ingesting it wrote and is quarantined anew with
    # the new reason.
    savepoint = db.session.begin_nested()
    try:
        ingested = ingest_message(inbound_id, proof=proofs.get(inbound_id))
    except IngestError:
        db.session.rollback()
        raise
    except OperationalError:
        raise
    except Exception as exc:
        _undo(savepoint)
        log.exception("replay of inbound message %s failed; quarantined", inbound_id)
        quarantine_failed(inbound_id, exc)
        db.session.flush()
        refreshed = db.session.get(InboundMessage, inbound_id, populate_existing=True)
        assert refreshed is not None
        return refreshed
    if savepoint.is_active:
        savepoint.commit()
    if ingested is None:
        db.session.rollback()
        raise IngestError(f"Message #{inbound_id} is being ingested already.")
    return ingested


def _quarantined(inbound_id: int) -> InboundMessage:
    """The quarantined message `inbound_id`, as stored now; raises IngestError when there is
    none or it is not quarantined."""
    inbound = db.session.get(InboundMessage, inbound_id, populate_existing=True)
    if inbound is None:
        raise IngestError(f"There is no incoming message #{inbound_id}.")
    if inbound.status != InboundStatus.QUARANTINED.value:
        raise IngestError(
            f"Message #{inbound_id} is {inbound.status}; only quarantined messages are replayed."
        )
    return inbound


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


def _route(
    result: Plan, channel: EmailChannel, message: ParsedMessage, thread: Correlation[Case] | None
) -> ServiceEmailRule | None:
    """Follow the channel: the rule to apply, or set the plan to ignore or quarantine.

    In all-matches mode the first route that opens cases (a rule or a case type) is followed
    and the other matches are only recorded; ignore or quarantine apply when none opens cases.
    A message that answers a case (`thread`, see `_answers`) and matched no route joins it
    rather than take a default route that ignores or quarantines (`_thread_rule`); a route it
    matched still decides.
    """
    try:
        routed = channel_service.route(channel, message)
    except channel_service.ChannelError as exc:
        result.action = QUARANTINE
        result.reason = str(exc)
        return None
    result.routing = [match.sentence for match in routed.matches]
    default = routed.first.route if routed.used_default and routed.first else None
    if (
        thread is not None
        and thread.case is not None
        and default is not None
        and (default.target_kind in SET_ASIDE)
    ):
        rule = _thread_rule(channel, thread.case)
        if rule is not None:
            result.routing.append(
                f"It answers a case ({thread.description}): it goes to {rule.name} rather than "
                "the default route."
            )
            return rule
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
    assert target.target_id is not None  # a route to a case type names it
    return _case_type_rule(f"{channel.name}: {target.target_label}", target.target_id)


# Routes that keep a message out of any case.
SET_ASIDE = (routing.IGNORE, routing.QUARANTINE)


def _answers(found: Correlation[Case], sender: str) -> bool:
    """Whether a message is known to answer its case well enough to pass a channel's default
    route that sets mail aside: it names a message of the case (In-Reply-To/References), or
    its case id comes from the case's own requester (anyone can type a case id)."""
    if found.case is None:
        return False
    if found.method == "in_reply_to":
        return True
    return found.method == "subject_case_id" and bool(sender) and sender == found.case.requester


def _thread_rule(channel: EmailChannel, case: Case) -> ServiceEmailRule | None:
    """The rule through which a message that answers `case` joins it, when it matched none
    of the channel's routes and the default route would set it aside: the first of the
    channel's rules that handles the case's type (its attachment limits and stage action
    apply), or for an open case of a type none of them handles, the rule a route to the case
    type gives. Only to join or reopen the case: for a resolved case whose rule would open a
    new case (or with no such rule) None, and the default route applies."""
    type_id = case.case_type.id  # a case opened earlier in the batch has no case_type_id yet
    for route in sorted(channel.routes, key=lambda r: r.position):
        rule = route.rule if route.target_kind == routing.RULE else None
        if rule is not None and (
            rule.case_type_id == type_id
            or (rule.case_type_id is None and rule.action == RuleAction.UPDATE_CASE.value)
        ):
            if case.status != "open" and rule.resolved_policy == ResolvedCasePolicy.NEW_CASE.value:
                return None
            return rule
    if case.status != "open":
        return None
    return _case_type_rule(f"{channel.name}: replies to {case.case_type.name}", type_id)


def _case_type_rule(name: str, case_type_id: int) -> ServiceEmailRule:
    """A rule for a route to a case type alone: it opens cases of the type with no field
    mappings, and replies join their case."""
    return ServiceEmailRule(
        name=name,
        action=RuleAction.CREATE_CASE.value,
        case_type_id=case_type_id,
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


def _carry_out(
    result: Plan, rule: ServiceEmailRule, account: EmailAccount | None, batch: Batch | None = None
) -> None:
    message = result.message
    assert message is not None  # only plans of parsed messages get here
    if result.action == OPEN:
        case_type = db.session.get(CaseType, rule.case_type_id) if rule.case_type_id else None
        if case_type is None:
            raise case_service.CaseError("The rule's case type no longer exists.")
        values = {m.field: m.value for m in result.mapped if m.value}
        subject = " ".join(message.subject.split())[:300] or NO_SUBJECT
        # A case opened just now was last updated just now: no second write to its row. Its
        # first rows are written with the batch's (their order among themselves is kept),
        # unless a stage action follows, whose entry must come after the email's. In the
        # batch's optimistic pass it is numbered with the batch's other new cases, just before
        # they are written, unless mail that shows its reference goes out at once: its first
        # stage's, or its stage action's. Then it and the cases before it are numbered now.
        optimistic = batch if batch is not None and batch.optimistic else None
        later = optimistic if not rule.stage_action else None
        entries: list[dict[str, Any]] | None = [] if later is not None else None
        unnumbered = (
            optimistic is not None
            and not rule.stage_action
            and not case_service.opening_mails(case_type)
        )
        if optimistic is not None and not unnumbered:
            optimistic.number_cases()
        result.case = case_service.open_case(
            case_type,
            values,
            subject=subject,
            requester=result.sender,
            user=None,
            channel="email",
            require_fields=False,
            email_account=account,
            flush=False,
            entries=entries,
            numbered=not unnumbered,
        )
        if optimistic is not None and unnumbered:
            optimistic.unnumbered.append(result.case)
        if later is not None and entries:
            later.rows += [(CaseEvent, result.case, entry) for entry in entries]
        _email_event(
            result.case, result.sender, message, touch=False, later=later, note=result.not_kept
        )
        _store_attachments(result.case, result.attachments, message, later=later)
        if rule.send_ack and rule.ack_subject:
            acknowledge = functools.partial(
                _queue_mail,
                result.case,
                OutboundKind.ACKNOWLEDGEMENT,
                result.sender,
                rule.ack_subject,
                rule.ack_body,
                message,
            )
            if result.case.reference:
                acknowledge()
            else:
                assert optimistic is not None
                optimistic.after_numbers.append(acknowledge)
            result.notes.append(f"An acknowledgement to {result.sender} was queued.")
        if rule.stage_action:
            _run_stage_action(result, rule, result.case)
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
    _email_event(case, result.sender, message, note=result.not_kept)
    _store_attachments(case, result.attachments, message)
    if rule.stage_action and case.status == "open":
        if batch is not None and not case.reference:
            batch.number_cases()  # opened earlier in the pass: the action may show its reference
        _run_stage_action(result, rule, case)


def _run_stage_action(result: Plan, rule: ServiceEmailRule, case: Case) -> None:
    try:
        # Rules saved before actions were stored by their key may hold the name ("Submit").
        case_service.apply_action(case, slugify(rule.stage_action), user=None, channel="email")
    except case_service.AlreadyProcessed:
        raise
    except case_service.CaseError as exc:
        # The message is on the timeline already; the action is for a person to take.
        result.notes.append(f"The stage action {rule.stage_action} was not run: {exc}")
    else:
        result.notes.append(f"Ran the stage action {rule.stage_action}.")


def _email_event(
    case: Case,
    sender: str,
    message: ParsedMessage,
    *,
    touch: bool = True,
    later: Batch | None = None,
    note: str = "",
) -> None:
    """The timeline entry of an email; `note` (on attachments not kept, say) goes under its
    subject, before the text that may be cut short."""
    text = message.text.strip()
    head = f"Subject: {message.subject or NO_SUBJECT}" + (f"\n{note}" if note else "")
    body = f"{head}\n\n{text}"
    # The same columns as a "created" entry's: a batch's entries go in one statement only
    # when they all name the same columns.
    values = {
        "kind": "email",
        "actor_id": None,
        "actor": sender[:320],
        "channel": "email",
        "action": "Email in",
        "from_stage": "",
        "to_stage": "",
        "comment": body[:MAX_EVENT_TEXT],
        "created_at": utcnow(),
    }
    if later is not None:
        later.rows.append((CaseEvent, case, values))
    else:
        db.session.add(CaseEvent(case=case, **values))
    if touch:
        case.updated_at = utcnow()


def _store_attachments(
    case: Case,
    planned: list[AttachmentPlan],
    message: ParsedMessage,
    *,
    later: Batch | None = None,
) -> None:
    for item, attachment in zip(planned, message.attachments, strict=True):
        if not item.kept:
            continue
        values = {
            "filename": item.filename,
            "content_type": item.content_type,
            "size": item.size,
            "data": attachment.content,
        }
        if later is not None:
            later.rows.append((CaseAttachment, case, values))
        else:
            db.session.add(CaseAttachment(case=case, **values))


def _queue_mail(
    case: Case, kind: OutboundKind, to: str, subject: str, body: str, answered: ParsedMessage
) -> None:
    if case_service.requester_problem(to):
        return  # not an address mail can be sent to (ops@intranet, say): nothing to answer
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
    # A case opened just now has no id before it is written: the flush that writes it gives
    # the message its id, in the same UPDATE as the rest.
    inbound.case = result.case
    inbound.correlation = result.correlation
    inbound.decisions = result.decisions
    inbound.processed_at = utcnow()


def _quarantine_after_rollback(
    inbound_id: int, reason: str, result: Plan, tally: Tally | None, *, claimed: bool = False
) -> InboundMessage:
    claimed = claimed or _claim(inbound_id)  # a batch's claim outlives the message's savepoint
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
    if case_service.requester_problem(result.sender):
        return  # not an address mail can be sent to (ops@intranet, say)
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


def _claim_one(inbound_id: int) -> InboundMessage | None:
    """Claim one message and load it, or None when it is not waiting."""
    if not _claim(inbound_id):
        return None
    return db.session.get(InboundMessage, inbound_id, populate_existing=True)


def _roll_back(batch: Batch | None = None) -> None:
    """Undo the writes of the message at hand: its savepoint in a batch, else the transaction.

    Raises Redo in a batch's optimistic pass, which has no savepoint per message.
    """
    if batch is not None and batch.optimistic:
        raise Redo
    savepoint = db.session().get_nested_transaction()
    if savepoint is not None:
        savepoint.rollback()
    else:
        db.session.rollback()


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


def _lookups(batch: Batch | None = None) -> Lookups[Case]:
    by_token: Callable[[str], Case | None] = approval_service.case_for_token
    by_case_id: Callable[[str], Case | None] = case_service.find_case
    if batch is not None:
        # Without writing the batch's rows first: that would lock the counter rows from here
        # to the commit. What the batch wrote cannot be what a reply names: its new cases
        # have no number yet, and no mail with their tokens has gone out.
        by_token, by_case_id = _without_flush(by_token), _without_flush(by_case_id)
    return Lookups(
        by_reply_token=by_token,
        by_message_ids=lambda message_ids: _cases_by_message_ids(message_ids, batch),
        by_case_id=by_case_id,
    )


def _without_flush(look_up: Callable[[str], Case | None]) -> Callable[[str], Case | None]:
    def looked_up(key: str) -> Case | None:
        with db.session.no_autoflush:
            return look_up(key)

    return looked_up


def _correlate(message: ParsedMessage, batch: Batch | None = None) -> Correlation[Case]:
    pattern = batch.subject_pattern if batch is not None else None
    if pattern is None:
        pattern = _subject_pattern()
    return correlate(message, _lookups(batch), subject_pattern=pattern)


def _subject_pattern() -> re.Pattern[str]:
    return case_id_pattern(list(db.session.scalars(select(CaseType.prefix))))


def _cases_by_message_ids(message_ids: Any, batch: Batch | None = None) -> dict[str, Case]:
    """Cases by the Message-IDs of messages they received or sent."""
    wanted = list(message_ids)
    if batch is not None:
        # Read for the whole batch before its first message; a reply to a message of the same
        # batch finds it among the batch's threads (it may not be linked to its case yet).
        known = {m: batch.answered[m] for m in wanted if m in batch.answered}
        return known | {m: batch.threads[m] for m in wanted if m in batch.threads}
    found: dict[str, Case] = {}
    # In pieces: a batch's replies may answer a few thousand ids, more than some SQLite builds
    # take as parameters of one statement.
    for start in range(0, len(wanted), _IDS_PER_QUERY):
        piece = wanted[start : start + _IDS_PER_QUERY]
        received = db.session.execute(
            select(InboundMessage.message_id, Case)
            .join(Case, Case.id == InboundMessage.case_id)
            .where(InboundMessage.message_id.in_(piece))
        )
        sent = db.session.execute(
            select(OutboundMessage.message_id, Case)
            .join(Case, Case.id == OutboundMessage.case_id)
            .where(OutboundMessage.message_id.in_(piece))
        )
        found.update({message_id: case for message_id, case in [*received, *sent] if message_id})
    return found


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
    message: ParsedMessage, account_id: int | None, inbound_id: int, batch: Batch | None = None
) -> int | None:
    """The id of a processed message of the same account with the same Message-ID."""
    if not message.message_id:
        return None
    if batch is not None:
        return batch.processed.get((account_id, message.message_id))
    stmt = select(InboundMessage.id).where(
        InboundMessage.message_id == message.message_id,
        InboundMessage.status == InboundStatus.PROCESSED.value,
        InboundMessage.account_id.is_(None)
        if account_id is None
        else InboundMessage.account_id == account_id,
    )
    return db.session.scalars(stmt.where(InboundMessage.id != inbound_id).limit(1)).first()


def _cases_opened_by(sender: str, batch: Batch | None = None) -> int:
    if not sender:
        return 0
    if batch is not None:
        return batch.opened[sender]
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
