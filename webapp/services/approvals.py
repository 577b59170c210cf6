"""Approval requests, and the decisions that answer them by reply or by signed link.

When a case enters an approval stage, each approver gets an `Approval` with a fresh reply
token (only its hash is stored) and an approval request in the outbox, which carries the token
in its Reply-To and in the signed Approve / Reject links. A request decides once, for the
stage visit, case version and approver it was made for, until it expires.

A reply is applied only when every check passes: exactly one well-formed From address, equal
to the approver; the proof of the sender's domain when the receiving account asks for it;
the request still pending, unexpired and for the stage visit the case is in; a decision word
on the first line of the new text; a reason when the stage needs one on rejection. Every
refused attempt is a "refused" event on the case's timeline; the approver is answered by email
except when the sender is not the approver (the address is not theirs to write from).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import select

from webapp.casetypes.definition import APPROVAL, Definition, StageDef
from webapp.casetypes.engine import APPROVE, REJECT, Outcome
from webapp.casetypes.templating import render
from webapp.extensions import db
from webapp.mail import authres
from webapp.mail.correlate import is_reply_token, new_reply_token
from webapp.mail.parse import ParsedMessage
from webapp.mail.reply import decision_from_message
from webapp.models import (
    Approval,
    ApprovalStatus,
    Case,
    CaseEvent,
    EmailAccount,
    InboundMessage,
    OutboundKind,
    Role,
    User,
)
from webapp.models.types import utcnow
from webapp.services import cases as case_service
from webapp.services.approval_links import APPROVE_MARK, REJECT_MARK
from webapp.services.outbox import queue_message

log = logging.getLogger(__name__)

DECIDED = (ApprovalStatus.APPROVED.value, ApprovalStatus.REJECTED.value)
MAX_EVENT_TEXT = 5000
HOW_TO_ANSWER = "Reply with APPROVE or REJECT on the first line; anything after is your comment."


class ApprovalError(ValueError):
    """A decision was refused; the message is fit to show to the approver."""


@dataclass(frozen=True)
class _Refusal:
    kind: str  # used / moved / expired / approved_already / not_approver
    sentence: str  # addressed to the approver


def token_digest(token: str) -> str:
    """The stored form of a reply token: its SHA-256, in hex."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


# Requests -----------------------------------------------------------------------------------


def issue_requests(case: Case, definition: Definition, stage: StageDef) -> list[Approval]:
    """Write an Approval and queue an approval request for each approver of the case in
    `stage`, which it is entering now (no flush; the caller flushes)."""
    if stage.kind != APPROVAL or not case.approvers:
        return []
    expires_at = utcnow() + timedelta(days=int(current_app.config["CASEMAIL_APPROVAL_TOKEN_DAYS"]))
    subject, intro = _designed_text(case, stage)
    body = _request_body(case, definition, stage, intro, expires_at)
    version_id = case.version_id or case.version.id
    approvals: list[Approval] = []
    for approver in case.approvers:
        token = new_reply_token()
        outbound = queue_message(
            case,
            kind=OutboundKind.APPROVAL_REQUEST,
            recipients=[approver],
            subject=subject,
            body=body,
            stage=stage.key,
            reply_token=token,
        )
        approval = Approval(
            case=case,
            approver=approver,
            stage=stage.key,
            stage_visit=case.stage_visit,
            version_id=version_id,
            token_hash=token_digest(token),
            expires_at=expires_at,
            status=ApprovalStatus.PENDING.value,
            outbound=outbound,
        )
        db.session.add(approval)
        approvals.append(approval)
    return approvals


def supersede_pending(case: Case) -> None:
    """Mark the case's pending approvals superseded: it is leaving their stage."""
    if case.id is None:
        return  # a case being opened has no approvals yet
    # Changed through the session rather than by one UPDATE, so that the approval objects this
    # transaction holds already (the one being decided) agree with their rows; `_decide`
    # marks its own approval decided after this.
    pending = db.session.scalars(
        select(Approval).where(
            Approval.case_id == case.id, Approval.status == ApprovalStatus.PENDING.value
        )
    )
    for approval in pending:
        approval.status = ApprovalStatus.SUPERSEDED.value


def _designed_text(case: Case, stage: StageDef) -> tuple[str, str]:
    """(subject, opening text) of the request.

    The designer's notification to the approvers of this stage, when there is one, leads the
    request: approvers get one message per stage entry, the one they can answer, and not
    also a token-less copy of it (`cases._queue_notifications` leaves them out).
    """
    values = case_service.template_values(case, stage)
    for note in stage.notifications:
        if "approvers" in note.recipients and (note.subject or note.body):
            subject = render(note.subject, values).strip()
            return subject or _default_subject(case, stage), render(note.body, values).strip()
    return _default_subject(case, stage), ""


def _default_subject(case: Case, stage: StageDef) -> str:
    return f"Approval needed ({stage.name}): {case.subject}"


def _request_body(
    case: Case, definition: Definition, stage: StageDef, intro: str, expires_at: datetime
) -> str:
    lines: list[str] = []
    if intro:
        lines += [intro, ""]
    lines += [
        f"{case.reference}: {case.subject}",
        f"Case type: {case.case_type.name}",
        f"Requester: {case.requester or '-'}",
        f"Waiting for: your decision in {stage.name}",
        "",
    ]
    fields = case.fields or {}
    for field_def in definition.fields:
        value = str(fields.get(field_def.name, "") or "").strip()
        if value:
            lines.append(f"{field_def.label}: " + value.replace("\n", "\n    "))
    lines += ["", "How to answer", HOW_TO_ANSWER]
    if stage.reason_required:
        lines.append("A reason is required when you reject: write it after REJECT.")
    else:
        lines.append("A comment is optional.")
    if stage.approval_mode == "all" and len(case.approvers) > 1:
        lines.append("Every approver asked must approve; one rejection decides.")
    lines += [
        "",
        "Or open a link: it shows the case and asks you to confirm before anything is decided.",
        "",
        "Approve:",
        APPROVE_MARK,
        "",
        "Reject:",
        REJECT_MARK,
        "",
        f"This request can be answered once, until {_when(expires_at)}.",
    ]
    return "\n".join(lines) + "\n"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


# Looking requests up -----------------------------------------------------------------------


def find_by_token(token: str) -> Approval | None:
    """The approval whose reply token this is, or None."""
    token = token.strip().lower()
    if not is_reply_token(token):
        return None
    return db.session.scalar(select(Approval).where(Approval.token_hash == token_digest(token)))


def case_for_token(token: str) -> Case | None:
    """The case of the approval whose reply token this is (for correlating replies)."""
    approval = find_by_token(token)
    return approval.case if approval is not None else None


def describe_reply(approval: Approval | None) -> str:
    """One sentence for a message that answers an approval request."""
    if approval is None:
        return "A reply to an approval request that no longer exists."
    return f"Decision reply for {approval.case.reference} (approval of {approval.approver})."


def _refusal(approval: Approval) -> _Refusal | None:
    """Why `approval` cannot decide now, or None when it can."""
    case = approval.case
    reference = case.reference
    if approval.status in DECIDED:
        verb = "approved" if approval.status == ApprovalStatus.APPROVED.value else "rejected"
        when = f" on {_when(approval.used_at)}" if approval.used_at else ""
        return _Refusal(
            "used", f"You already {verb} {reference}{when}; a request is answered only once."
        )
    if (
        approval.status == ApprovalStatus.SUPERSEDED.value
        or case.stage != approval.stage
        or case.stage_visit != approval.stage_visit
        or case.version_id != approval.version_id
    ):
        # (An approval stage is never a resolution: a closed case has always moved on.)
        where = "is closed" if case.status != "open" else "has moved on"
        return _Refusal(
            "moved",
            f"{reference} {where} (another approver may have decided first); "
            "this request no longer decides.",
        )
    if approval.expires_at <= utcnow():
        return _Refusal(
            "expired",
            f"This request expired on {_when(approval.expires_at)}; an admin can still decide "
            f"{reference} on its case page.",
        )
    if approval.approver not in (case.approvers or []):
        return _Refusal("not_approver", f"You are no longer an approver of {reference}.")
    if approval.approver in (case.approvals or []):
        return _Refusal(
            "approved_already",
            f"You have already approved {reference}; the other approvers still need to.",
        )
    return None


def refusal_for_link(approval: Approval) -> str | None:
    """Why a link of `approval` cannot decide now (for the page), or None when it can."""
    refusal = _refusal(approval)
    return refusal.sentence if refusal is not None else None


# Deciding ------------------------------------------------------------------------------------


def decide_by_link(approval: Approval, decision: str, comment: str) -> str:
    """Apply the decision of a signed link (flushes; the caller commits); returns one sentence
    for the page. Raises ApprovalError when it cannot decide, with the reason."""
    if decision not in (APPROVE, REJECT):
        raise ApprovalError("Choose Approve or Reject.")
    refusal = _refusal(approval)
    if refusal is not None:
        raise ApprovalError(refusal.sentence)
    comment = comment.strip()
    if decision == REJECT and _stage_of(approval).reason_required and not comment:
        raise ApprovalError("Give a reason for the rejection.")
    reference = approval.case.reference
    try:
        outcome = _decide(approval, decision, comment, via="link", channel="web")
    except case_service.AlreadyProcessed:
        raise ApprovalError(
            f"{reference} was decided by someone else at the same moment; "
            "open the link again to see where it stands."
        ) from None
    return _confirmation(approval, outcome)


def record_decision(
    case: Case, stage_visit: int, approver: str, decision: str, comment: str, *, via: str
) -> None:
    """Mark `approver`'s request for that visit of the stage as used by `decision`.

    Called for every decision, wherever it was taken (the case page, the API, a reply, a
    link), so that a request answered one way cannot be answered again another way.
    """
    approval = db.session.scalar(
        select(Approval).where(
            Approval.case_id == case.id,
            Approval.stage_visit == stage_visit,
            Approval.approver == approver.lower(),
        )
    )
    if approval is None or approval.used_at is not None:
        return
    approval.status = (
        ApprovalStatus.APPROVED.value if decision == APPROVE else ApprovalStatus.REJECTED.value
    )
    approval.used_at = utcnow()
    approval.decided_via = via[:10]
    approval.comment = comment.strip()[:MAX_EVENT_TEXT]


def _decide(
    approval: Approval,
    decision: str,
    comment: str,
    *,
    via: str,
    channel: str,
    inbound: InboundMessage | None = None,
) -> Outcome:
    """Apply `decision` as the approver and mark the approval used, in this transaction.

    Raises ApprovalError when the engine refuses, AlreadyProcessed when the case was changed
    by another transaction first.
    """
    case = approval.case
    try:
        outcome = case_service.apply_action(
            case, decision, user=_acting_user(approval.approver), channel=channel, comment=comment
        )
    except case_service.AlreadyProcessed:
        raise
    except case_service.CaseError as exc:
        raise ApprovalError(str(exc)) from None
    # After the case moved on (which supersedes the pending approvals): this one is decided.
    approval.status = (
        ApprovalStatus.APPROVED.value if decision == APPROVE else ApprovalStatus.REJECTED.value
    )
    approval.used_at = utcnow()
    approval.decided_via = via
    approval.comment = comment[:MAX_EVENT_TEXT]
    if inbound is not None:
        approval.inbound_id = inbound.id
    db.session.flush()
    return outcome


def _acting_user(address: str) -> User:
    """Who the engine sees deciding: the approver's user, or a stand-in with their address."""
    user = db.session.scalar(select(User).where(User.email == address))
    if user is not None and user.role != Role.ADMIN.value:
        return user
    # Never added to the session: it only names the approver to the engine. An admin who is
    # asked as an approver decides as that approver, without an admin's override, so that a
    # request (a reply, a link) settles only its own part of a stage that needs everyone.
    return User(id=user.id if user else None, email=address, role=Role.WORKER.value)


def _stage_of(approval: Approval) -> StageDef:
    return case_service.definition_of(approval.case).stage(approval.stage)


def _confirmation(approval: Approval, outcome: Outcome) -> str:
    case = approval.case
    verb = "approved" if outcome.action == APPROVE else "rejected"
    if outcome.moved:
        stage_name = case_service.definition_of(case).stage(outcome.to_stage).name
        return f"You {verb} {case.reference}; it moved on to {stage_name}."
    return f"You approved {case.reference}; it waits for the other approvers."


# Replies by email ------------------------------------------------------------------------


def apply_reply(
    inbound: InboundMessage,
    message: ParsedMessage,
    approval: Approval,
    *,
    proof: str | None = None,
) -> str:
    """Apply the decision in an approver's reply, or refuse it (flushes; the caller commits).

    Returns the sentence recorded on the incoming message. Raises AlreadyProcessed when the
    case was changed by another transaction at the same moment: the caller rolls back and
    ingests the message again later. `proof` is what `sender_proof` said about the message
    before the caller's transaction took any lock; without it the proof is checked here.
    """
    case = approval.case
    sender = message.sender
    actor = (sender or message.header("From") or inbound.from_address or "unknown sender")[:320]
    if sender is None:
        count = len(message.from_addresses)
        what = f"{count} From addresses" if count > 1 else "no single well-formed From address"
        return _refuse(
            approval, message, actor, f"The reply has {what}; a decision needs exactly one sender."
        )
    if sender != approval.approver:
        return _refuse(
            approval,
            message,
            actor,
            f"The reply came from {sender}, but the request was sent to {approval.approver}.",
        )
    account = db.session.get(EmailAccount, inbound.account_id) if inbound.account_id else None
    if account is not None and account.require_authenticated_replies:
        problem = (
            proof if proof is not None else _unauthenticated(inbound.raw, message, account, sender)
        )
        if problem:
            return _refuse(
                approval,
                message,
                actor,
                f"The reply does not prove that it comes from {sender}: {problem}",
                answer=(
                    "This mailbox applies decisions only from replies that prove their sender "
                    "(a DKIM signature of your domain, or the check of a trusted mail server), "
                    "and yours did not. Use the Approve or Reject link in the request instead."
                ),
            )
    refusal = _refusal(approval)
    if refusal is not None:
        return _refuse(
            approval, message, actor, _reason_of(refusal), answer=refusal.sentence + _unchanged()
        )
    decision = decision_from_message(message)
    if decision.verdict is None:
        return _refuse(
            approval,
            message,
            actor,
            "The first line of the reply holds neither APPROVE nor REJECT.",
            answer=_not_understood(approval, decision.new_text),
        )
    comment = decision.comment
    if decision.verdict == REJECT and _stage_of(approval).reason_required and not comment:
        return _refuse(
            approval,
            message,
            actor,
            "A rejection needs a reason, and the reply gave none.",
            answer=(
                f"{case.reference} was not rejected: a rejection needs a reason. Reply again "
                "with REJECT on the first line and your reason after it."
            ),
        )
    try:
        outcome = _decide(
            approval, decision.verdict, comment, via="email", channel="email", inbound=inbound
        )
    except ApprovalError as exc:
        return _refuse(approval, message, actor, str(exc), answer=str(exc) + _unchanged())
    sentence = _confirmation(approval, outcome)
    text = sentence
    if comment:
        text += "\n\nYour comment:\n" + comment
    _answer(approval, message, text + "\n")
    return f"{approval.approver} decided by email: " + sentence.removeprefix("You ")


def _reason_of(refusal: _Refusal) -> str:
    """The timeline's wording of a refusal (the approver's wording speaks to them)."""
    reasons = {
        "used": "The reply token was used already: this request was answered before.",
        "moved": "The case has left the stage (or its visit) this request was for.",
        "expired": "The request has expired.",
        "not_approver": "The sender is no longer an approver of this stage.",
        "approved_already": "The sender has approved this stage already.",
    }
    return reasons[refusal.kind]


def _unchanged() -> str:
    return "\n\nYour reply changed nothing."


def _not_understood(approval: Approval, new_text: str) -> str:
    first = new_text.strip().partition("\n")[0][:200]
    said = f'\n\nYour reply began with: "{first}"' if first else "\n\nYour reply had no new text."
    reason = ""
    if _stage_of(approval).reason_required:
        reason = "\nA reason is required when you reject: write it after REJECT."
    return (
        f"Your reply about {approval.case.reference} could not be understood: its first line "
        f"holds neither APPROVE nor REJECT.{said}\n\n{HOW_TO_ANSWER}{reason}"
        "\nYou can still answer the request: reply to it again."
    )


def _refuse(
    approval: Approval,
    message: ParsedMessage,
    actor: str,
    reason: str,
    *,
    answer: str | None = None,
) -> str:
    """Record a refused decision on the timeline, answer the approver when `answer` is given;
    returns the sentence for the incoming message."""
    db.session.add(
        CaseEvent(
            case=approval.case,
            kind="refused",
            actor=actor,
            channel="email",
            action="Decision refused",
            comment=reason[:MAX_EVENT_TEXT],
            created_at=utcnow(),
        )
    )
    if answer is not None:
        _answer(approval, message, answer + "\n")
    return f"Decision refused: {reason}"


def _answer(approval: Approval, message: ParsedMessage, body: str) -> None:
    """Queue an answer to the approver, in the thread of their reply."""
    subject = message.subject.strip() or approval.case.subject
    if not subject.lower().startswith("re:"):
        subject = f"Re: {subject}"
    queue_message(
        approval.case,
        kind=OutboundKind.ANSWER,
        recipients=[approval.approver],
        subject=subject,
        body=body,
        stage=approval.stage,
        in_reply_to=message.message_id,
        references=[*message.references, message.message_id] if message.message_id else (),
    )


# Proof of the sender's domain ------------------------------------------------------------------


def sender_proof(raw: bytes, message: ParsedMessage, account: EmailAccount) -> str | None:
    """Why a reply to `account` does not prove its sender's domain ("" when it does), for
    `apply_reply`; None when the account asks for no proof or the reply has no single sender.

    It may look signers' keys up in DNS, which can take seconds: a batch calls it before it
    claims its messages, so that no lock of the database waits for the answer.
    """
    sender = message.sender
    if sender is None or not account.require_authenticated_replies:
        return None
    return _unauthenticated(raw, message, account, sender)


def _unauthenticated(raw: bytes, message: ParsedMessage, account: EmailAccount, sender: str) -> str:
    """Why the reply does not prove its sender's domain; "" when it does."""
    domain = sender.rpartition("@")[2]
    problems: list[str] = []
    trusted = [t for t in (account.trusted_authserv_ids or "").replace(" ", "").split(",") if t]
    if trusted:
        results = authres.authentication_results(message.headers, trusted)
        if results.passes_for(domain) is not None:
            return ""
        if results.authserv_id is None:
            problems.append("no Authentication-Results header of a trusted server")
        elif results.problem:
            problems.append(f"the header of {results.authserv_id} is {results.problem}")
        else:
            said = "; ".join(str(r) for r in results.results) or "none"
            problems.append(f"{results.authserv_id} reports {said}")
    try:
        dnsfunc = _dnsfunc()
    except ValueError as exc:
        problems.append(str(exc))
        return "; ".join(problems) + "."
    signatures = authres.dkim_result(raw, dnsfunc)
    if signatures.passes_for(domain) is not None:
        return ""
    if not signatures.signed:
        problems.append("no DKIM signature")
    elif signatures.valid_domains:
        problems.append(
            "DKIM signatures of " + ", ".join(signatures.valid_domains) + f", not of {domain}"
        )
    else:
        problems.append("the DKIM signature does not verify (" + "; ".join(signatures.notes) + ")")
    return "; ".join(problems) + "."


_pinned_cache: dict[tuple[str, float], dict[str, bytes]] = {}


def _dnsfunc() -> authres.DnsFunc | None:
    """dkimpy's key lookup: the pinned keys of CASEMAIL_DKIM_KEYS first, then DNS.

    Raises ValueError when the file cannot be read or holds a line that is not a key.
    """
    path = current_app.config.get("CASEMAIL_DKIM_KEYS") or ""
    if not path:
        return None
    try:
        stamp = os.stat(path).st_mtime
        keys = _pinned_cache.get((path, stamp))
        if keys is None:
            with open(path, encoding="utf-8") as handle:
                keys = authres.pinned_keys(handle.read())
            _pinned_cache.clear()
            _pinned_cache[(path, stamp)] = keys
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("CASEMAIL_DKIM_KEYS cannot be used: %s", exc)
        raise ValueError(f"the DKIM key file (CASEMAIL_DKIM_KEYS) cannot be used: {exc}") from None
    return authres.pinned_dnsfunc(keys, authres.dns_lookup())
