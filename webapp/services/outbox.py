"""The outbox: every outgoing message is written here, in the transaction that caused it.

`queue_message` is the one way to write an `OutboundMessage`: it picks the sending account,
fixes the Message-ID and keeps the reply token encrypted. A session hook (workers/outbound.py)
enqueues the sender job once the transaction commits; that job uses the rest of this module:
claim the messages, hold those past a rate limit, build and sign them, send them over one
connection per account, and record each server's answer.
"""

from __future__ import annotations

import base64
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import make_msgid
from typing import Any

from flask import current_app
from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.elements import ColumnElement

from webapp.extensions import db
from webapp.mail.connect import ConnectivityError
from webapp.mail.correlate import plus_address
from webapp.mail.keystore import KeystoreError, SigningKey, load_signing_key
from webapp.mail.oauth import OAuthError
from webapp.mail.outbound import (
    HeaderValueError,
    OutboundAttachment,
    OutboundError,
    OutboundSpec,
    build_outbound,
    clean_display_name,
    message_bytes,
    outbound_bytes,
)
from webapp.mail.sending import Delivery, Keep, Outcome, Sender, SmtpSession, graph_session
from webapp.mail.sign import SigningError, smime_sign
from webapp.models import (
    Case,
    CaseAttachment,
    CaseEvent,
    EmailAccount,
    InboundMessage,
    OutboundKind,
    OutboundMessage,
    OutboundRecipient,
    OutboundStatus,
    User,
)
from webapp.models.types import utcnow
from webapp.secretbox import SecretError, get_secretbox
from webapp.services.accounts import sender_endpoint, smtp_login
from webapp.services.approval_links import fill_links
from webapp.services.auth_profiles import oauth_settings, profile_token
from webapp.services.mail_settings import host_policy

log = logging.getLogger(__name__)

MAX_SUBJECT = 998


def one_line(text: str) -> str:
    """`text` on one line: every run of whitespace (line breaks included) made one space, and
    control characters, which no header can carry, too (a sender's subject may hold them)."""
    return clean_display_name(text)


def case_subject(case: Case, subject: str) -> str:
    """`subject` carrying the case id in brackets, which threads replies without a token.

    A case id the subject names already is put in brackets where it stands; otherwise the
    bracketed id goes in front.
    """
    tag = f"[{case.reference}]"
    text = one_line(subject)
    if tag not in text:
        bare = re.compile(rf"(?<![\w\[-]){re.escape(case.reference)}(?![\w\]-])")
        text, found = bare.subn(tag, text, count=1)
        if not found:
            text = f"{tag} {text}".strip()
    return text[:MAX_SUBJECT]


def sending_account(case: Case | None) -> EmailAccount | None:
    """The account a case's mail goes out from: the one it arrived through, else its type's."""
    if case is None:
        return None
    return case.email_account or case.case_type.email_account


def queue_message(
    case: Case | None,
    *,
    kind: OutboundKind,
    recipients: Sequence[str],
    subject: str,
    body: str,
    cc: Sequence[str] = (),
    account: EmailAccount | None = None,
    stage: str = "",
    automatic: bool = True,
    attach_case_files: bool = False,
    attachment_ids: Iterable[int] = (),
    reply_token: str | None = None,
    created_by: User | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
) -> OutboundMessage:
    """Write one outgoing message to the outbox (flushes; the caller commits).

    Without `account` the case's sending account is used. Without `in_reply_to` the sender
    threads a case message into the case's conversation when it sends it (the message that
    opens a case is linked to it only after this). `reply_token` is kept encrypted until the
    message is sent. The sender job is enqueued when the transaction commits.
    """
    if case is not None:
        subject = case_subject(case, subject)
    addresses = list(dict.fromkeys(a.strip().lower() for a in recipients if a.strip()))
    copies = [
        a for a in dict.fromkeys(a.strip().lower() for a in cc if a.strip()) if a not in addresses
    ]
    outbound = OutboundMessage(
        case=case,
        account=account or sending_account(case),
        kind=kind.value,
        stage=stage or (case.stage if case is not None else ""),
        recipients=addresses,
        cc=copies,
        subject=one_line(subject)[:MAX_SUBJECT],
        body=body,
        automatic=automatic,
        attach_case_files=attach_case_files,
        attachment_ids=list(attachment_ids),
        message_id=make_msgid(domain=current_app.config["CASEMAIL_MESSAGE_ID_DOMAIN"]),
        in_reply_to=in_reply_to,
        references=list(references),
        token_encrypted=get_secretbox().encrypt(reply_token) if reply_token else None,
        status=OutboundStatus.PENDING.value,
        created_by=created_by,
    )
    outbound.addressees = [OutboundRecipient(address=a) for a in [*addresses, *copies]]
    # No flush here: callers such as apply_action flush once, where a concurrent change of
    # the case is detected.
    db.session.add(outbound)
    return outbound


# -- sending ------------------------------------------------------------------------------------

# Waits before the next attempt after a temporary failure; after the last one the message fails.
BACKOFF = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=15),
    timedelta(minutes=60),
    timedelta(minutes=240),
)
# A message still "sending" after this long lost its sender (a crash, a killed worker): no live
# sender starts a message later than SEND_WITHIN after claiming it (`transmit`), and one message
# with the default timeouts (15 s to connect, 30 s an answer) ends within five minutes of that.
STUCK_AFTER = timedelta(minutes=10)
SEND_WITHIN = timedelta(minutes=5)
NOT_STARTED = (
    "Not sent yet: the messages sent before it in its batch took more than five minutes, so it "
    "was put back to be sent by the next sender."
)
# New messages are sent by the job enqueued at commit; the sweeper leaves them this long to it.
DUE_GRACE = timedelta(seconds=5)
RATE_WINDOW = timedelta(hours=1)
ATTENTION = (OutboundStatus.HELD, OutboundStatus.UNCERTAIN, OutboundStatus.FAILED)
RELEASABLE = (OutboundStatus.FAILED, OutboundStatus.UNCERTAIN, OutboundStatus.HELD)
CANCELLABLE = (
    OutboundStatus.PENDING,
    OutboundStatus.HELD,
    OutboundStatus.FAILED,
    OutboundStatus.UNCERTAIN,
)
UNCERTAIN_REASON = (
    "The sender stopped while handing this message to the server, so it may or may not have "
    "been delivered. Check with the recipient, then send it again or cancel it."
)
NOT_DELIVERED = "Email not delivered"


class OutboxError(ValueError):
    """An outbox action was refused; the message says why."""


class _BuildError(Exception):
    """The message cannot be sent as stored (a permanent failure); the message says why."""


@dataclass(frozen=True)
class SendResult:
    """What one send attempt did: the message's status afterwards and a line for people."""

    outbound_id: int
    status: str
    detail: str


@dataclass(frozen=True)
class _Unavailable:
    """The sender of an account that cannot be used now: every message gets `delivery`."""

    delivery: Delivery

    def send(self, sender: str, recipients: Sequence[str], raw: bytes) -> Delivery:
        return self.delivery


@dataclass(frozen=True)
class _Built:
    sender: str
    recipients: list[str]
    raw: bytes


def _due(now: datetime) -> ColumnElement[bool]:
    return or_(OutboundMessage.next_attempt_at.is_(None), OutboundMessage.next_attempt_at <= now)


@dataclass(slots=True)
class Claimed:
    """What sending one claimed message needs, as the claim returned it (no ORM object)."""

    id: int
    case_id: int | None
    account_id: int | None
    recipients: list[str]
    cc: list[str]
    subject: str
    body: str
    attach_case_files: bool
    attachment_ids: list[int]
    automatic: bool
    message_id: str | None
    in_reply_to: str | None
    references: list[str]
    reply_to: str
    token_encrypted: str | None
    attempts: int
    next_attempt_at: datetime | None
    sending_at: datetime | None
    sent_at: datetime | None


_CLAIMED = tuple(getattr(OutboundMessage, name) for name in Claimed.__slots__)


def claim(outbound_ids: Sequence[int], now: datetime) -> list[Claimed]:
    """Mark the due pending messages among `outbound_ids` "sending" and return them, in id
    order, with what sending them needs.

    One conditional UPDATE: of two senders given the same ids, each message goes to one. The
    caller commits before sending, so that a crash leaves the message "sending" (then
    "uncertain"), never "pending" to be sent again unnoticed.
    """
    if not outbound_ids:
        return []
    # On the session's connection: the ORM's bulk update machinery would cost more than the
    # statement, and no loaded OutboundMessage needs to see the change.
    result = db.session.connection().execute(
        update(OutboundMessage)
        .where(
            OutboundMessage.id.in_(list(outbound_ids)),
            OutboundMessage.status == OutboundStatus.PENDING.value,
            _due(now),
        )
        .values(
            status=OutboundStatus.SENDING.value,
            sending_at=now,
            attempts=OutboundMessage.attempts + 1,
        )
        .returning(*_CLAIMED)
    )
    claimed = [Claimed(*values) for values in result]
    claimed.sort(key=lambda c: c.id)
    return claimed


def hold_over_limit(
    rows: Sequence[Claimed], now: datetime, references: dict[int, str]
) -> dict[int, str]:
    """The automatic messages among `rows` (claimed, in id order) that would pass a rate limit,
    with the reason to record for each.

    A message counts against the limits from the moment it is written, unless it was held or
    cancelled; earlier messages come first. Grouped queries count what came before the batch
    (`_counts`); the batch is counted here as it goes. Only a message's first attempt is
    checked: one an admin released (or sent again) goes out without another check.
    """
    per_recipient = current_app.config["CASEMAIL_RATE_LIMIT_PER_RECIPIENT"]
    per_case = current_app.config["CASEMAIL_RATE_LIMIT_PER_CASE"]
    candidates = [r for r in rows if r.automatic and r.attempts <= 1 and r.next_attempt_at is None]
    if not candidates or (per_recipient <= 0 and per_case <= 0):
        return {}
    first = rows[0].id
    since = now - RATE_WINDOW
    to_address: dict[str, int] = defaultdict(int)
    if per_recipient > 0:
        wanted = {a for r in candidates for a in [*r.recipients, *r.cc]}
        to_batch = Counter(a for r in rows for a in {*r.recipients, *r.cc})
        to_address.update(
            _counts(
                OutboundRecipient.address,
                wanted,
                per_recipient,
                to_batch,
                OutboundRecipient.created_at >= since,
                OutboundRecipient.outbound_id < first,
                join=OutboundRecipient.outbound_id,
            )
        )
    from_case: dict[int, int] = defaultdict(int)
    case_ids = {r.case_id for r in candidates if r.case_id is not None}
    if per_case > 0 and case_ids:
        from_batch = Counter(r.case_id for r in rows if r.case_id is not None)
        from_case.update(
            _counts(
                OutboundMessage.case_id,
                case_ids,
                per_case,
                from_batch,
                OutboundMessage.created_at >= since,
                OutboundMessage.id < first,
            )
        )
    candidate_ids = {r.id for r in candidates}
    held: dict[int, str] = {}
    for row in rows:
        addresses = list(dict.fromkeys([*row.recipients, *row.cc]))
        reason = ""
        if row.id in candidate_ids:
            reason = _over_limit(
                row, addresses, to_address, from_case, per_recipient, per_case, references
            )
        if reason:
            held[row.id] = f"{reason} Send it again to send it anyway, or cancel it."
            log.warning("outbound message %s held by a rate limit: %s", row.id, reason)
            continue
        for address in addresses:
            to_address[address] += 1
        if row.case_id is not None:
            from_case[row.case_id] += 1
    return held


def _counts(
    key: InstrumentedAttribute[Any],
    keys: set[Any],
    limit: int,
    batch: Counter[Any],
    *window: ColumnElement[bool],
    join: InstrumentedAttribute[int] | None = None,
) -> dict[Any, int]:
    """The messages counted against a limit in `window`, for each of `keys`.

    The first count takes every message in the window, held and cancelled ones too, from an
    index alone. That is never less than what the limits count, so it will do for every key
    whose count is within its room (`limit` less the key's messages in the `batch`): that key
    cannot reach the limit in this batch either way. The keys beyond it are counted again
    without the held and cancelled messages, which reads the messages' rows; most keys are
    far from their limit, so that is rare.
    """
    found: dict[Any, int] = dict(
        db.session.execute(
            select(key, func.count()).where(key.in_(keys), *window).group_by(key)
        ).all()
    )
    near = {k for k, count in found.items() if count > limit - batch[k]}
    if near:
        counted = OutboundMessage.status.not_in(
            [OutboundStatus.HELD.value, OutboundStatus.CANCELLED.value]
        )
        exact = select(key, func.count()).where(key.in_(near), *window, counted).group_by(key)
        if join is not None:
            exact = exact.join(OutboundMessage, OutboundMessage.id == join)
        found.update({k: 0 for k in near})
        found.update(db.session.execute(exact).all())
    return found


def _over_limit(
    row: Claimed,
    addresses: list[str],
    to_address: dict[str, int],
    from_case: dict[int, int],
    per_recipient: int,
    per_case: int,
    references: dict[int, str],
) -> str:
    """Why `row` passes a limit, or "" when it does not."""
    if per_recipient > 0:
        for address in addresses:
            if to_address[address] >= per_recipient:
                return (
                    f"Held: {address} was sent {_messages(per_recipient)} in the last hour, "
                    "the limit per recipient (CASEMAIL_RATE_LIMIT_PER_RECIPIENT)."
                )
    if per_case > 0 and row.case_id is not None and from_case[row.case_id] >= per_case:
        reference = references.get(row.case_id, row.case_id)
        return (
            f"Held: case {reference} sent {_messages(per_case)} in the last hour, the limit "
            "per case (CASEMAIL_RATE_LIMIT_PER_CASE)."
        )
    return ""


def _messages(count: int) -> str:
    return f"{count} message" if count == 1 else f"{count} messages"


def _signing_key(account: EmailAccount) -> SigningKey:
    keystore = account.signing_keystore
    assert keystore is not None
    try:
        box = get_secretbox()
        data = base64.b64decode(box.decrypt(keystore.pkcs12_encrypted or ""))
        password = box.decrypt(keystore.password_encrypted) if keystore.password_encrypted else ""
    except SecretError:
        raise KeystoreError(
            f"The signing keystore {keystore.name} cannot be decrypted with the keys in "
            "CASEMAIL_SECRET_KEYS."
        ) from None
    return load_signing_key(data, password, account.signing_alias)


def _sender_problem(account: EmailAccount | None) -> str:
    if account is None:
        return (
            "There is no email account to send from: choose one on the case type "
            "(or on the listener the case came through)."
        )
    if account.sender_protocol == "graph":
        if account.sender_auth_profile is None or not account.graph_sender_upn:
            return (
                f"The email account {account.account_id} has no Microsoft Graph mailbox or "
                "OAuth 2.0 profile for sending: complete its sender settings."
            )
    elif not account.smtp_host or not account.smtp_port or not account.smtp_email:
        return (
            f"The email account {account.account_id} has no SMTP server or email address "
            "for sending: complete its sender settings."
        )
    return ""


def _from_address(account: EmailAccount) -> str:
    if account.sender_protocol == "graph":
        return account.smtp_email or account.graph_sender_upn
    return account.smtp_email


def _account_reply_to(account: EmailAccount) -> str:
    if account.sender_protocol == "graph":
        return account.graph_sender_reply_to or account.smtp_reply_to
    return account.smtp_reply_to


def _threads(rows: Sequence[Claimed]) -> dict[int, tuple[str | None, list[str]]]:
    """(In-Reply-To, References) placing a message in its case's conversation, for every case
    among `rows` whose messages do not name their thread: the case's first incoming message
    starts the thread, its latest is the one answered."""
    case_ids = {r.case_id for r in rows if r.case_id is not None and not r.in_reply_to}
    if not case_ids:
        return {}
    found: dict[int, list[str]] = defaultdict(list)
    for case_id, message_id in db.session.execute(
        select(InboundMessage.case_id, InboundMessage.message_id)
        .where(InboundMessage.case_id.in_(case_ids), InboundMessage.message_id.is_not(None))
        .order_by(InboundMessage.id)
    ):
        if message_id and case_id is not None:
            found[case_id].append(message_id)
    return {
        case_id: (ids[-1], list(dict.fromkeys([ids[0], ids[-1]]))) for case_id, ids in found.items()
    }


def _attachments(rows: Sequence[Claimed]) -> dict[int, list[CaseAttachment]]:
    """The case attachments each message carries, by message id."""
    whole = {r.case_id for r in rows if r.attach_case_files and r.case_id is not None}
    chosen = {i for r in rows if not r.attach_case_files and r.case_id for i in r.attachment_ids}
    if not whole and not chosen:
        return {}
    found = db.session.scalars(
        select(CaseAttachment)
        .where(or_(CaseAttachment.case_id.in_(whole), CaseAttachment.id.in_(chosen)))
        .order_by(CaseAttachment.id)
    ).all()
    result: dict[int, list[CaseAttachment]] = {}
    for row in rows:
        if row.attach_case_files:
            result[row.id] = [a for a in found if a.case_id == row.case_id]
        elif row.attachment_ids and row.case_id is not None:
            wanted = set(row.attachment_ids)
            result[row.id] = [a for a in found if a.case_id == row.case_id and a.id in wanted]
    return result


class _Builder:
    """Builds the messages of one batch, with what they share loaded once."""

    def __init__(self, rows: Sequence[Claimed], references: dict[int, str]) -> None:
        self.references = references
        self.threads = _threads(rows)
        self.attachments = _attachments(rows)
        self.signing: dict[int, SigningKey | KeystoreError] = {}
        self.domain = current_app.config["CASEMAIL_MESSAGE_ID_DOMAIN"]

    def _signer(self, account: EmailAccount) -> SigningKey:
        if account.id not in self.signing:
            try:
                self.signing[account.id] = _signing_key(account)
            except KeystoreError as exc:
                self.signing[account.id] = exc
        found = self.signing[account.id]
        if isinstance(found, KeystoreError):
            raise _BuildError(f"The message cannot be signed: {found}")
        return found

    def build(self, row: Claimed, account: EmailAccount | None) -> _Built:
        """The message's bytes, from `account`; raises _BuildError."""
        problem = _sender_problem(account)
        if problem:
            raise _BuildError(problem)
        assert account is not None
        try:
            token = get_secretbox().decrypt(row.token_encrypted) if row.token_encrypted else None
        except SecretError:
            raise _BuildError(
                "The reply token of this message cannot be decrypted with the keys in "
                "CASEMAIL_SECRET_KEYS."
            ) from None
        from_address = _from_address(account)
        reply_base = _account_reply_to(account)
        if token:
            reply_to: str | None = plus_address(reply_base or from_address, token)
        else:
            reply_to = row.reply_to or reply_base or None
        in_reply_to, references = row.in_reply_to, row.references or []
        if not in_reply_to and row.case_id is not None:
            in_reply_to, references = self.threads.get(row.case_id, (None, []))
        spec = OutboundSpec(
            from_address=from_address,
            from_name=account.smtp_display_name,
            reply_to=reply_to,
            to=tuple(row.recipients),
            cc=tuple(row.cc or ()),
            subject=row.subject,
            text=fill_links(row.body, token) if token else row.body,
            message_id_domain=self.domain,
            message_id=row.message_id,
            in_reply_to=in_reply_to,
            references=tuple(references),
            automatic=row.automatic,
            token=token,
            case_id=self.references.get(row.case_id) if row.case_id is not None else None,
            attachments=tuple(
                OutboundAttachment(a.filename, a.content_type, a.data)
                for a in self.attachments.get(row.id, [])
            ),
        )
        try:
            if account.signing_keystore is None:
                raw = outbound_bytes(spec)
            else:
                message = build_outbound(spec)
                key = self._signer(account)
                raw = message_bytes(smime_sign(message, key.key, key.cert, key.chain))
        except (HeaderValueError, OutboundError, SigningError) as exc:
            raise _BuildError(f"The message cannot be built: {exc}") from None
        return _Built(from_address, [*row.recipients, *(row.cc or [])], raw)


class Senders:
    """One open sender per account for a whole batch. At the end, an SMTP connection is kept
    for the account's next batch (CASEMAIL_SMTP_KEEP_SECONDS) unless the batch failed; the
    others are closed."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._open: dict[int, Sender] = {}

    def __enter__(self) -> Senders:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stack.__exit__(*exc_info)

    def for_account(self, account: EmailAccount) -> Sender:
        sender = self._open.get(account.id)
        if sender is None:
            sender = self._open[account.id] = self._start(account)
        return sender

    def _start(self, account: EmailAccount) -> Sender:
        policy = host_policy()
        try:
            if account.sender_protocol == "graph":
                profile = account.sender_auth_profile
                assert profile is not None
                token = profile_token(profile).access_token
                return self._stack.enter_context(
                    graph_session(
                        oauth_settings(profile),
                        policy,
                        profile.graph_url,
                        account.graph_sender_upn,
                        token,
                        float(account.graph_sender_timeout or 30),
                    )
                )
            local = (account.smtp_advanced or {}).get("mail.smtp.localhost")
            keep = Keep(account.id, current_app.config["CASEMAIL_SMTP_KEEP_SECONDS"])
            session = SmtpSession(
                sender_endpoint(account), smtp_login(account), policy, local, keep
            )
            return self._stack.enter_context(session)
        except (ConnectivityError, OAuthError) as exc:
            return _Unavailable(Delivery(Outcome.RETRY, str(exc)))
        except SecretError:
            return _Unavailable(
                Delivery(
                    Outcome.RETRY,
                    f"A stored secret of the email account {account.account_id} cannot be "
                    "decrypted with the keys in CASEMAIL_SECRET_KEYS.",
                )
            )


def _not_delivered(row: Claimed, last_error: str, now: datetime) -> None:
    if row.case_id is None:
        return
    to = ", ".join([*row.recipients, *(row.cc or [])])
    db.session.add(
        CaseEvent(
            case_id=row.case_id,
            kind="email",
            actor="system",
            channel="system",
            action=NOT_DELIVERED,
            comment=f"{last_error}\n(“{row.subject}” to {to})",
            created_at=now,
        )
    )


_RECORDED_COLUMNS = (
    "status",
    "attempts",
    "sending_at",
    "sent_at",
    "next_attempt_at",
    "token_encrypted",
    "last_error",
)


def _unchanged(row: Claimed) -> dict[str, Any]:
    """Every column `record` writes, as the claim left it: one shape for one executemany."""
    return {
        "id": row.id,
        "claimed_at": row.sending_at,
        "status": OutboundStatus.SENDING.value,
        "attempts": row.attempts,
        "sending_at": row.sending_at,
        "sent_at": row.sent_at,
        "next_attempt_at": row.next_attempt_at,
        "token_encrypted": row.token_encrypted,
        "last_error": "",
    }


def held(row: Claimed, reason: str) -> dict[str, Any]:
    """The columns that record a claimed message held by a rate limit."""
    return _untried(row, OutboundStatus.HELD, reason)


def not_started(row: Claimed, now: datetime) -> dict[str, Any]:
    """The columns that put back a claimed message whose turn came too late: pending and due
    at once."""
    return _untried(row, OutboundStatus.PENDING, NOT_STARTED, next_attempt_at=now)


def _untried(
    row: Claimed, status: OutboundStatus, reason: str, **more: datetime | None
) -> dict[str, Any]:
    """The columns of a claimed message that was not handed to a server: its attempt is not
    counted."""
    values = _unchanged(row)
    values.update(
        status=status.value,
        attempts=max(0, row.attempts - 1),
        sending_at=None,
        last_error=reason,
        **more,
    )
    return values


def outcome(row: Claimed, delivery: Delivery, now: datetime) -> dict[str, Any]:
    """The columns that record what the server answered for a claimed message."""
    values = _unchanged(row)
    if delivery.outcome == Outcome.SENT:
        values.update(
            status=OutboundStatus.SENT.value,
            sent_at=now,
            next_attempt_at=None,
            # The Approval keeps the token's hash; nothing else needs the token.
            token_encrypted=None,
            last_error=delivery.answer if delivery.refused else "",
        )
    elif delivery.outcome == Outcome.RETRY and row.attempts <= len(BACKOFF):
        values.update(
            status=OutboundStatus.PENDING.value,
            next_attempt_at=now + BACKOFF[max(row.attempts, 1) - 1],
            last_error=delivery.answer,
        )
    else:
        values.update(
            status=OutboundStatus.FAILED.value,
            next_attempt_at=None,
            last_error=(
                f"Gave up after {row.attempts} attempts. {delivery.answer}"
                if delivery.outcome == Outcome.RETRY
                else delivery.answer
            ),
        )
    return values


# Built once and run on the session's connection: one executemany, without the ORM's bulk
# update machinery, which costs more than the statement itself for a chunk of messages.
# Only a message still as this sender's claim left it is written ("sending", or "uncertain" if
# the sweeper gave up on it meanwhile, with this claim's time): one an admin cancelled or sent
# again since, or another sender claimed, is theirs.
_RECORD = (
    update(OutboundMessage)
    .where(
        OutboundMessage.id == bindparam("b_id"),
        or_(  # not in_(): executemany takes no expanding parameter
            OutboundMessage.status == OutboundStatus.SENDING.value,
            OutboundMessage.status == OutboundStatus.UNCERTAIN.value,
        ),
        OutboundMessage.sending_at == bindparam("b_claimed_at"),
    )
    .values({name: bindparam(f"b_{name}") for name in _RECORDED_COLUMNS})
)


def record(changes: Sequence[dict[str, Any]]) -> None:
    """Write what `held` and `outcome` return, in one executemany UPDATE (commit after)."""
    if changes:
        rows = [{f"b_{name}": value for name, value in values.items()} for values in changes]
        result = db.session.connection().execute(_RECORD, rows)
        written = result.rowcount
        if 0 <= written < len(rows):
            log.warning(
                "%d of %d outbound messages changed while they were being sent (cancelled, "
                "sent again or taken by another sender); their answers were not recorded: %s",
                len(rows) - written,
                len(rows),
                [values["id"] for values in changes],
            )


def _result(values: dict[str, Any]) -> SendResult:
    detail: str = values["last_error"]
    if values["status"] == OutboundStatus.PENDING.value and values["next_attempt_at"] is not None:
        detail = f"{detail} (next attempt {values['next_attempt_at']:%H:%M:%S} UTC)"
    return SendResult(values["id"], values["status"], detail)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A claimed message made ready: its bytes and sender, or why it cannot go."""

    row: Claimed
    sender: Sender | None
    built: _Built | None
    failure: Delivery | None


@dataclass(frozen=True, slots=True)
class Answer:
    """What the server said about one Outgoing message, and when; `started` is False for
    one left unsent because its turn came too late (SEND_WITHIN)."""

    delivery: Delivery
    at: datetime
    started: bool = True


def prepare(rows: Sequence[Claimed], senders: Senders) -> tuple[list[Outgoing], list[SendResult]]:
    """Hold, build and pick the sender of claimed messages: (what to transmit, the held).

    The held ones are recorded now (flushed, for the caller to commit), so that the limits of
    the next chunk, prepared before this one is recorded, do not count them.
    """
    if not rows:
        return [], []
    now = utcnow()
    case_ids = {r.case_id for r in rows if r.case_id is not None}
    references: dict[int, str] = (
        dict(db.session.execute(select(Case.id, Case.reference).where(Case.id.in_(case_ids))).all())
        if case_ids
        else {}
    )
    account_ids = {r.account_id for r in rows if r.account_id is not None}
    accounts = {
        a.id: a
        for a in db.session.scalars(select(EmailAccount).where(EmailAccount.id.in_(account_ids)))
    }
    reasons = hold_over_limit(rows, now, references)
    held_changes = [held(r, reasons[r.id]) for r in rows if r.id in reasons]
    record(held_changes)
    todo = [r for r in rows if r.id not in reasons]
    builder = _Builder(todo, references)
    outgoing: list[Outgoing] = []
    for row in todo:
        account = accounts.get(row.account_id) if row.account_id is not None else None
        try:
            built = builder.build(row, account)
        except _BuildError as exc:
            outgoing.append(Outgoing(row, None, None, Delivery(Outcome.FAILED, str(exc))))
        except Exception as exc:
            # One message that trips a fault must not stop the batch (whose messages sent so
            # far could then only be recorded as uncertain).
            log.exception("outbound message %s could not be built", row.id)
            failure = Delivery(
                Outcome.FAILED,
                f"The message could not be built because of an internal error "
                f"({type(exc).__name__}); it was logged.",
            )
            outgoing.append(Outgoing(row, None, None, failure))
        else:
            assert account is not None
            outgoing.append(Outgoing(row, senders.for_account(account), built, None))
    return outgoing, [_result(values) for values in held_changes]


def transmit(outgoing: Sequence[Outgoing]) -> list[Answer]:
    """Hand the prepared messages to their servers, in order: network only, no database, so
    that it can run while the next messages are prepared.

    A message whose turn comes more than SEND_WITHIN after its claim (a slow server held up the
    ones before it) is not started: it goes back for its next attempt, so that no live sender
    still holds a message when the sweeper takes it for lost.
    """
    answers: list[Answer] = []
    for item in outgoing:
        if item.built is None or item.sender is None:
            assert item.failure is not None
            delivery = item.failure
        elif item.row.sending_at is not None and utcnow() - item.row.sending_at > SEND_WITHIN:
            answers.append(Answer(Delivery(Outcome.RETRY, NOT_STARTED), utcnow(), started=False))
            continue
        else:
            built = item.built
            delivery = item.sender.send(built.sender, built.recipients, built.raw)
        answers.append(Answer(delivery, utcnow()))
    return answers


def finish(outgoing: Sequence[Outgoing], answers: Sequence[Answer]) -> list[SendResult]:
    """Record what the servers answered (the caller commits)."""
    changes = []
    for item, answer in zip(outgoing, answers, strict=True):
        if not answer.started:
            changes.append(not_started(item.row, answer.at))
            continue
        values = outcome(item.row, answer.delivery, answer.at)
        if values["status"] == OutboundStatus.FAILED.value:
            _not_delivered(item.row, values["last_error"], answer.at)
            log.warning("outbound message %s failed: %s", item.row.id, values["last_error"])
        changes.append(values)
    record(changes)
    return [_result(values) for values in changes]


def due_ids(now: datetime, limit: int = 1000) -> list[int]:
    """Pending messages whose time has come (new ones after DUE_GRACE), oldest first."""
    return list(
        db.session.scalars(
            select(OutboundMessage.id)
            .where(
                OutboundMessage.status == OutboundStatus.PENDING.value,
                or_(
                    OutboundMessage.next_attempt_at <= now,
                    and_(
                        OutboundMessage.next_attempt_at.is_(None),
                        OutboundMessage.created_at <= now - DUE_GRACE,
                    ),
                ),
            )
            .order_by(OutboundMessage.id)
            .limit(limit)
        )
    )


def joining(outbound_ids: Sequence[int], now: datetime, limit: int) -> list[int]:
    """Up to `limit` other due pending messages of the accounts `outbound_ids` send from,
    oldest first: what a job can send over the same connections while it has room.

    Under a backlog of small jobs (every stage change enqueues one), the first job takes what
    the waiting ones carry, and they find their messages claimed: the connection and the
    database round trips serve a batch instead of one or two messages.
    """
    if limit <= 0 or not outbound_ids:
        return []
    own = list(outbound_ids)
    accounts = db.session.scalars(
        select(OutboundMessage.account_id)
        .where(OutboundMessage.id.in_(own), OutboundMessage.account_id.is_not(None))
        .distinct()
    ).all()
    if not accounts:
        return []
    # ix_outbound_account_status_id gives each account's pending messages in id order: the
    # query reads about `limit` rows, however long the outbox's history.
    return list(
        db.session.scalars(
            select(OutboundMessage.id)
            .where(
                OutboundMessage.account_id.in_(accounts),
                OutboundMessage.status == OutboundStatus.PENDING.value,
                _due(now),
                OutboundMessage.id.not_in(own),
            )
            .order_by(OutboundMessage.id)
            .limit(limit)
        )
    )


def mark_uncertain(now: datetime) -> int:
    """Turn messages left "sending" longer than STUCK_AFTER into "uncertain"; returns how many."""
    result = db.session.execute(
        update(OutboundMessage)
        .where(
            OutboundMessage.status == OutboundStatus.SENDING.value,
            OutboundMessage.sending_at < now - STUCK_AFTER,
        )
        .values(status=OutboundStatus.UNCERTAIN.value, last_error=UNCERTAIN_REASON)
        .execution_options(synchronize_session=False)
    )
    count: int = result.rowcount  # type: ignore[attr-defined]
    if count:
        log.warning("%d outbound messages were left sending; marked uncertain", count)
    return count


def send_again(outbound_id: int, now: datetime) -> OutboundMessage:
    """Put a failed, uncertain or held message back in line, to be sent now, without another
    rate-limit check. Raises OutboxError."""
    return _change(
        outbound_id,
        RELEASABLE,
        {
            "status": OutboundStatus.PENDING.value,
            "next_attempt_at": now,
            "attempts": 0,
            "sending_at": None,
        },
        "can be sent again",
    )


def cancel(outbound_id: int) -> OutboundMessage:
    """Decide not to send a message that has not gone out. Raises OutboxError."""
    return _change(
        outbound_id,
        CANCELLABLE,
        {
            "status": OutboundStatus.CANCELLED.value,
            "next_attempt_at": None,
            "token_encrypted": None,
        },
        "can be cancelled",
    )


def _change(
    outbound_id: int,
    allowed: Sequence[OutboundStatus],
    values: dict[str, object],
    what: str,
) -> OutboundMessage:
    # Conditional, like the claim: a sender that takes the message meanwhile wins.
    result = db.session.execute(
        update(OutboundMessage)
        .where(
            OutboundMessage.id == outbound_id,
            OutboundMessage.status.in_([s.value for s in allowed]),
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    row = db.session.get(OutboundMessage, outbound_id, populate_existing=True)
    if row is None:
        raise OutboxError("There is no such message in the outbox.")
    if not result.rowcount:  # type: ignore[attr-defined]
        names = [s.value for s in allowed]
        listed = f"{', '.join(names[:-1])} or {names[-1]}"
        raise OutboxError(f"Only {listed} messages {what}; message {row.id} is {row.status}.")
    return row


def status_counts() -> dict[str, int]:
    """How many messages the outbox holds in each status (every status, zeros included)."""
    counts = dict(
        db.session.execute(
            select(OutboundMessage.status, func.count(OutboundMessage.id)).group_by(
                OutboundMessage.status
            )
        ).all()
    )
    return {s.value: int(counts.get(s.value, 0)) for s in OutboundStatus}
