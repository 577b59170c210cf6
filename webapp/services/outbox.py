"""The outbox: every outgoing message is written here, in the transaction that caused it.

`queue_message` is the one way to write an `OutboundMessage`: it picks the sending account,
fixes the Message-ID, threads the message into its case's conversation and remembers the new
row on the session, so that the sender job is enqueued once the transaction commits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from email.utils import make_msgid

from flask import current_app
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import (
    Case,
    EmailAccount,
    InboundMessage,
    OutboundKind,
    OutboundMessage,
    OutboundRecipient,
    OutboundStatus,
    User,
)
from webapp.secretbox import get_secretbox

MAX_SUBJECT = 998


def one_line(text: str) -> str:
    """`text` with every run of whitespace (line breaks included) made one space."""
    return " ".join(text.split())


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


def thread_of(case: Case) -> tuple[str | None, list[str]]:
    """(In-Reply-To, References) that place a new message in the case's conversation."""
    ids = [
        message_id
        for message_id in db.session.scalars(
            select(InboundMessage.message_id)
            .where(InboundMessage.case_id == case.id, InboundMessage.message_id.is_not(None))
            .order_by(InboundMessage.id)
        )
        if message_id
    ]
    if not ids:
        return None, []
    # The first message starts the thread; the latest is the one answered.
    references = list(dict.fromkeys([ids[0], ids[-1]]))
    return ids[-1], references


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
