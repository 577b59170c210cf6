"""Receiving: one poll of one listener, storing each message before the server forgets it.

A poll is a unit of work of its own: it commits each batch of stored messages before it flags,
moves or deletes them on the server (the transactional inbox), so unlike other services it
commits. Call it with nothing pending in the session.
"""

from __future__ import annotations

import contextlib
import hashlib
import imaplib
import logging
import poplib
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from sqlalchemy import Table, func, insert, select

from webapp.extensions import db
from webapp.mail import graph
from webapp.mail.connect import ConnectivityError, Endpoint, explain, server_answer
from webapp.mail.graph import DeltaExpired, GraphError
from webapp.mail.hostpolicy import HostPolicy, HostRefused
from webapp.mail.imap import _IMAP, MailboxLogin, _sign_in
from webapp.mail.oauth import OAuthError, OAuthSettings, check_url
from webapp.mail.pop3 import _POP3
from webapp.mail.summary import summarize
from webapp.models import (
    AfterProcessing,
    EmailAccount,
    EmailListener,
    InboundMessage,
    InboundRaw,
    InboundStatus,
)
from webapp.models.storage import sequence_ids
from webapp.models.types import utcnow
from webapp.secretbox import SecretError
from webapp.services.accounts import (
    TEST_TIMEOUT,
    UNDECRYPTABLE,
    _for_test,
    _mailbox_login,
    _token,
    receiver_endpoint,
)
from webapp.services.auth_profiles import oauth_settings
from webapp.services.mail_settings import host_policy
from webapp.services.turns import write_turn

log = logging.getLogger(__name__)
# Called with the ids of each committed batch that still need ingesting.
Committed = Callable[[list[int]], None]
_SEEN = b"\\Seen"
_DELETED = b"\\Deleted"


class ReceivingError(ValueError):
    """A poll could not run (the account receives with a protocol not polled); says why."""


@dataclass
class PollResult:
    fetched: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    errors: list[str] = field(default_factory=list)
    # The poll reached its time limit with mail left on the server for the next poll.
    more: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        text = f"fetched {self.fetched}, stored {self.stored}, duplicates {self.duplicates}"
        if self.quarantined:
            text += f", quarantined {self.quarantined}"
        return text


@dataclass(frozen=True)
class _Identity:
    """Where a message sits on its server: IMAP folder/UIDVALIDITY/UID, or a POP3 UIDL."""

    folder: str | None = None
    uidvalidity: int | None = None
    uid: int | None = None
    uidl: str | None = None
    graph_id: str | None = None


class _ImapClient(IMAPClient):
    """IMAPClient over the accounts' policy-checked connection, without protocol logging."""

    def __init__(self, endpoint: Endpoint, policy: HostPolicy) -> None:
        self._endpoint = endpoint
        self._policy = policy
        super().__init__(endpoint.host, endpoint.port, ssl=False, timeout=endpoint.read_timeout)
        # IMAPClient logs every protocol line at debug level: that makes fetching ~4x slower.
        self._imap.debug = 0

    def _create_IMAP4(self) -> imaplib.IMAP4:
        return _IMAP(self._endpoint, self._policy)


@contextlib.contextmanager
def _imap_session(endpoint: Endpoint, login: MailboxLogin, policy: HostPolicy) -> Iterator[Any]:
    client = _ImapClient(endpoint, policy)
    try:
        if endpoint.security == "starttls":
            client.starttls(endpoint.tls_context())
        try:
            _sign_in(client._imap, login)
        except imaplib.IMAP4.error as exc:
            raise ConnectivityError(
                f"Authentication failed for {login.user}: the server answered {server_answer(exc)}"
            ) from None
        # Servers announce more (IDLE, MOVE, UIDPLUS) once signed in than IMAPClient cached
        # before STARTTLS; the sign-in went around it, so it must ask again.
        client._cached_capabilities = None
        yield client
        with contextlib.suppress(imaplib.IMAP4.error, IMAPClientError, OSError):
            client.logout()
    finally:
        if client._imap.state != "LOGOUT":
            with contextlib.suppress(OSError):
                client.shutdown()


# A poll's first batch is small and each next one twice the one before, up to the listener's
# batch size: ingest starts on the first messages of a large backlog while the rest are fetched.
FIRST_BATCH = 10


def _batches(
    items: Sequence[Any], size: int, result: PollResult, until: float | None
) -> Iterator[Sequence[Any]]:
    """The poll's batches of `items`, each twice the one before up to `size`.

    With a time limit (`until`, on the monotonic clock) they stay at FIRST_BATCH, so that none
    takes long, and after the first none is started once it has passed: the rest is left on
    the server and `result.more` says so."""
    size = max(size, 1)
    step = min(FIRST_BATCH, size)
    start = 0
    while start < len(items):
        if start and _past(until):
            result.more = True
            return
        yield items[start : start + step]
        start += step
        if until is None:
            step = min(step * 2, size)


def _known(
    listener: EmailListener, identities: list[_Identity], message_ids: list[str]
) -> tuple[set[_Identity], set[str]]:
    """Which of a batch's server identities and Message-IDs are stored for the account already.

    Two queries per batch rather than two per message.
    """
    of_account = InboundMessage.account_id == listener.account_id
    uidls = [i.uidl for i in identities if i.uidl is not None]
    uids = [i.uid for i in identities if i.uid is not None]
    graph_ids = [i.graph_id for i in identities if i.graph_id is not None]
    stored: set[_Identity] = set()
    if graph_ids:
        stored.update(_Identity(graph_id=g) for g in _stored_graph_ids(listener, graph_ids))
    if uidls:
        stored_uidls = db.session.scalars(
            select(InboundMessage.uidl).where(of_account, InboundMessage.uidl.in_(uidls))
        )
        stored.update(_Identity(uidl=uidl) for uidl in stored_uidls)
    if uids:
        first = identities[0]
        stored_uids = db.session.scalars(
            select(InboundMessage.uid).where(
                of_account,
                InboundMessage.folder == first.folder,
                InboundMessage.uidvalidity == first.uidvalidity,
                InboundMessage.uid.in_(uids),
            )
        )
        stored.update(
            _Identity(folder=first.folder, uidvalidity=first.uidvalidity, uid=uid)
            for uid in stored_uids
        )
    known_ids: set[str] = set()
    if message_ids:
        known_ids.update(
            m
            for m in db.session.scalars(
                select(InboundMessage.message_id).where(
                    of_account, InboundMessage.message_id.in_(message_ids)
                )
            )
            if m is not None
        )
    return stored, known_ids


@dataclass
class _NewMessages:
    """The messages of a batch to store: their rows, without ids yet, and their raw bytes."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)


def _store_batch(
    listener: EmailListener,
    items: Sequence[tuple[_Identity, bytes]],
    source: str,
    result: PollResult,
    by_message_id: bool = True,
) -> _NewMessages:
    """The messages of `items` to store, leaving out those stored already; oversize or empty
    ones are quarantined. A message is known by its server identity, and (when
    `by_message_id`) by its Message-ID: a folder whose UIDVALIDITY changed, or a message
    delivered twice, comes back under a new identity but with a Message-ID already stored."""
    summaries = [summarize(raw) for _, raw in items]
    message_ids = [s.message_id for s in summaries if s.message_id] if by_message_id else []
    stored, known_ids = _known(listener, [identity for identity, _ in items], message_ids)
    new = _NewMessages()
    for (identity, raw), summary in zip(items, summaries, strict=True):
        result.fetched += 1
        if identity in stored or (by_message_id and summary.message_id in known_ids):
            result.duplicates += 1
            continue
        if summary.message_id:
            known_ids.add(summary.message_id)
        reason = ""
        if not raw.strip():
            reason = "The message is empty."
        elif len(raw) > listener.max_message_bytes:
            # Kept whole: nothing is lost, and an admin can replay it after raising the limit.
            reason = (
                f"The message has {len(raw):,} bytes, more than the listener's limit of "
                f"{listener.max_message_bytes:,}."
            )
        new.rows.append(
            {
                "source": source,
                "message_id": summary.message_id,
                "subject": summary.subject,
                "from_address": summary.from_address,
                "sha256": hashlib.sha256(raw).hexdigest(),
                "size": len(raw),
                "status": (
                    InboundStatus.QUARANTINED.value if reason else InboundStatus.RECEIVED.value
                ),
                "status_reason": reason,
                "listener_id": listener.id,
                "account_id": listener.account_id,
                "folder": identity.folder,
                "uidvalidity": identity.uidvalidity,
                "uid": identity.uid,
                "uidl": identity.uidl,
                "graph_id": identity.graph_id,
            }
        )
        new.raws.append(raw)
        if reason:
            result.quarantined += 1
        else:
            result.stored += 1
    return new


def _commit_batch(listener: EmailListener, new: _NewMessages, committed: Committed) -> None:
    # On SQLite the batch is written in its turn among the ingest workers (services.turns).
    with write_turn() as take_turn:
        take_turn()
        ids = _insert_messages(new)
        # Received messages are counted when ingest decides what they are; only those
        # quarantined here (too large) never reach ingest.
        statuses = [row["status"] for row in new.rows]
        listener.quarantined_count += statuses.count(InboundStatus.QUARANTINED.value)
        to_ingest = [
            i
            for i, status in zip(ids, statuses, strict=True)
            if status == InboundStatus.RECEIVED.value
        ]
        db.session.commit()
    if to_ingest:
        committed(to_ingest)


def _insert_messages(new: _NewMessages) -> list[int]:
    """Write the messages and their raw bytes; their ids, in order. On PostgreSQL that is one
    multi-row statement for each table, after one query for the ids; SQLite writes the messages
    one INSERT … RETURNING each, as the unit of work did, and the bytes in one statement.

    A batch is a hundred rows of some twenty columns each: through the ORM's unit of work,
    building, tracking and flushing them took about a third of a poll's time. The columns'
    defaults (received_at, attempts, ...) are the same either way: they belong to the table.
    """
    if not new.rows:
        return []
    messages = cast(Table, InboundMessage.__table__)
    raws = cast(Table, InboundRaw.__table__)
    ids = sequence_ids(messages.name, len(new.rows))
    if ids is None:  # the database picks them, and says which, in the order of the rows
        returning = insert(messages).returning(messages.c.id, sort_by_parameter_order=True)
        ids = list(db.session.scalars(returning, new.rows))
    else:
        db.session.execute(
            insert(messages), [{**row, "id": i} for row, i in zip(new.rows, ids, strict=True)]
        )
    db.session.execute(
        insert(raws), [{"id": i, "raw": raw} for i, raw in zip(ids, new.raws, strict=True)]
    )
    return ids


# -- IMAP ---------------------------------------------------------------------------------------


def _imap_after(client: Any, listener: EmailListener, uids: list[int]) -> None:
    if not uids:
        return
    action = listener.after_processing
    if action == AfterProcessing.MARK_READ.value:
        client.add_flags(uids, [_SEEN], silent=True)
    elif action == AfterProcessing.MOVE.value and client.has_capability("MOVE"):
        client.move(uids, listener.move_to_folder)
    else:
        if action == AfterProcessing.MOVE.value:
            client.copy(uids, listener.move_to_folder)
        client.add_flags(uids, [_DELETED], silent=True)
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(uids)
        else:
            client.expunge()


# UIDs and UIDVALIDITY are 32-bit numbers (RFC 3501); anything else a server answers is not one.
_MAX_UID = 2**32 - 1


def _uids(answer: Any) -> set[int]:
    """The UIDs of a SEARCH answer that can be UIDs."""
    return {u for u in answer if isinstance(u, int) and 0 < u <= _MAX_UID}


def _stored_uids(listener: EmailListener, uidvalidity: int, uids: set[int]) -> set[int]:
    """Which of `uids` of the listener's folder (at `uidvalidity`) are stored."""
    found: set[int] = set()
    wanted = sorted(uids)
    for start in range(0, len(wanted), 500):
        found.update(
            db.session.scalars(
                select(InboundMessage.uid).where(
                    InboundMessage.account_id == listener.account_id,
                    InboundMessage.folder == listener.folder,
                    InboundMessage.uidvalidity == uidvalidity,
                    InboundMessage.uid.in_(wanted[start : start + 500]),
                )
            )
        )
    return found


def _fetch(client: Any, uids: Sequence[int], result: PollResult) -> dict[int, bytes]:
    """The raw bytes of each of `uids` the server gives. When it refuses the batch, each
    message is asked for alone, so that one it cannot give holds back no other: that one is
    named in the poll's errors, and asked for again at the next poll. A lost connection
    (`abort`) ends the poll as any other would."""
    answers = _fetch_answer(client, uids, result if len(uids) == 1 else None)
    if answers is None:
        answers = {}
        for uid in uids:
            answers.update(_fetch_answer(client, [uid], result) or {})
    bodies: dict[int, bytes] = {}
    for uid in uids:
        body = answers.get(uid, {}).get(b"BODY[]")
        if isinstance(body, bytes | bytearray):  # not expunged meanwhile, and not NIL
            bodies[uid] = bytes(body)
    return bodies


def _fetch_answer(
    client: Any, uids: Sequence[int], result: PollResult | None
) -> dict[int, Any] | None:
    """The server's FETCH answer for `uids`, or None when it refuses (named in `result`)."""
    try:
        answer: dict[int, Any] = client.fetch(uids, ["BODY.PEEK[]"])
    except imaplib.IMAP4.abort:
        raise
    except imaplib.IMAP4.error as exc:
        if result is not None:
            result.errors.append(f"The server did not give message UID {uids[0]}: {exc}")
        return None
    return answer


def _highest_stored_uid(listener: EmailListener, uidvalidity: int) -> int:
    highest = db.session.scalar(
        select(func.max(InboundMessage.uid)).where(
            InboundMessage.account_id == listener.account_id,
            InboundMessage.folder == listener.folder,
            InboundMessage.uidvalidity == uidvalidity,
        )
    )
    return int(highest or 0)


def _poll_imap(
    listener: EmailListener,
    endpoint: Endpoint,
    login: MailboxLogin,
    committed: Committed,
    until: float | None,
) -> PollResult:
    result = PollResult()
    with _imap_session(endpoint, login, host_policy()) as client:
        try:
            selected = client.select_folder(listener.folder)
        except imaplib.IMAP4.error as exc:
            answer = server_answer(exc).removeprefix("select failed: ")
            raise ConnectivityError(
                f"The folder {listener.folder} cannot be opened: the server answered {answer}"
            ) from None
        except ValueError:
            selected = {}
        uidvalidity = selected.get(b"UIDVALIDITY")
        if not isinstance(uidvalidity, int) or not 0 < uidvalidity <= _MAX_UID:
            raise ConnectivityError(
                f"The server gave the folder {listener.folder} no valid UIDVALIDITY, without "
                "which its messages cannot be told apart: nothing was fetched."
            )
        if listener.uidvalidity != uidvalidity:
            # New UIDs for the whole folder: start over; the Message-ID check keeps already
            # stored messages from being stored again.
            listener.uidvalidity = uidvalidity
            listener.last_uid = 0
            db.session.commit()
        # No message of the folder has a UID from UIDNEXT on: a SEARCH answer naming one names
        # no message, and a last_uid there (set by such an answer) is brought back to what is
        # stored, so that mail below it is not left to the \Seen flag.
        uidnext = selected.get(b"UIDNEXT")
        below = uidnext if isinstance(uidnext, int) and 0 < uidnext <= _MAX_UID + 1 else None
        if below is not None and listener.last_uid >= below:
            listener.last_uid = _highest_stored_uid(listener, uidvalidity)
            db.session.commit()
        last_uid = listener.last_uid
        # Flags set by people reading the mailbox (\Seen) say nothing about what was stored, so
        # new mail is "UID above the last stored one", not UNSEEN. `N:*` always answers the
        # highest UID, even below N.
        new = {
            u
            for u in _uids(client.search(["UID", f"{last_uid + 1}:*"]))
            if u > last_uid and (below is None or u < below)
        }
        if last_uid:
            # Left by an earlier poll that stopped before flagging, moving or deleting them.
            criteria = ["UNSEEN"] if listener.after_processing == "mark_read" else ["ALL"]
            new |= _uids(client.search(["UID", f"1:{last_uid}", *criteria]))
        # Those stored already (left by an earlier poll, or above a message the server did not
        # give then) are finished now, the others fetched. Nothing is ever flagged, moved or
        # deleted unless it is stored.
        done = _stored_uids(listener, uidvalidity, new)
        _imap_after(client, listener, sorted(done))
        # The lowest UID asked for and not given: last_uid stays below it, so that the next
        # poll asks for it again whatever its flags are by then.
        hole: int | None = None
        for batch in _batches(sorted(new - done), listener.max_batch, result, until):
            bodies = _fetch(client, batch, result)
            items = [
                (_Identity(folder=listener.folder, uidvalidity=uidvalidity, uid=uid), raw)
                for uid, raw in bodies.items()
            ]
            storing = _store_batch(listener, items, "imap", result)
            missing = [uid for uid in batch if uid not in bodies]
            if missing and hole is None:
                hole = missing[0]
            reached = [uid for uid in bodies if hole is None or uid < hole]
            if reached:
                listener.last_uid = max(listener.last_uid, *reached)
            _commit_batch(listener, storing, committed)
            # What was fetched is stored now, or was already (a duplicate).
            _imap_after(client, listener, sorted(bodies))
    return result


def _past(until: float | None) -> bool:
    return until is not None and time.monotonic() >= until


# -- POP3 ---------------------------------------------------------------------------------------


# A unique-id is 1 to 70 characters from 0x21 to 0x7E (RFC 1939).
_UIDL_RE = re.compile(r"[!-~]{1,70}\Z")


def _uidl_listing(lines: list[bytes], result: PollResult) -> list[tuple[int, str]]:
    """(message number, unique-id) of each well-formed line of a UIDL answer. A line that is
    not one, and every line of a unique-id listed more than once, leaves its message on the
    server, named in the errors: without an id of its own a message can be neither stored
    once nor deleted safely (the other one would be deleted in its place)."""
    parsed: list[tuple[bytes, str, str]] = []
    for line in lines:
        number_text, _, uidl = line.decode("ascii", "replace").strip().partition(" ")
        parsed.append((line, number_text, uidl.strip()))
    times = Counter(uidl for _, _, uidl in parsed)
    listing: list[tuple[int, str]] = []
    for line, number_text, uidl in parsed:
        if not number_text.isdigit() or not _UIDL_RE.match(uidl) or times[uidl] > 1:
            result.errors.append(
                f"The server listed a message without a unique id of its own "
                f"({line[:80].decode('ascii', 'replace')!r}); it was left on the server."
            )
            continue
        listing.append((int(number_text), uidl))
    return listing


def _pop3_sizes(lines: list[bytes]) -> dict[int, int]:
    """Message number -> size in octets, from a LIST answer (lines it cannot read left out)."""
    sizes: dict[int, int] = {}
    for line in lines:
        number, _, size = line.decode("ascii", "replace").strip().partition(" ")
        if number.isdigit() and size.strip().isdigit():
            sizes[int(number)] = int(size.strip())
    return sizes


def _stored_uidls(listener: EmailListener, uidls: list[str]) -> set[str]:
    """Which of `uidls` are stored for the listener's account, asked in pieces (a mailbox left
    on the server can list tens of thousands)."""
    found: set[str] = set()
    for start in range(0, len(uidls), 500):
        found.update(
            u
            for u in db.session.scalars(
                select(InboundMessage.uidl).where(
                    InboundMessage.account_id == listener.account_id,
                    InboundMessage.uidl.in_(uidls[start : start + 500]),
                )
            )
            if u is not None
        )
    return found


def _poll_pop3(
    listener: EmailListener,
    endpoint: Endpoint,
    login: MailboxLogin,
    committed: Committed,
    until: float | None,
) -> PollResult:
    result = PollResult()
    client = _POP3(endpoint, host_policy(), max_line=listener.max_message_bytes)
    try:
        try:
            client.user(login.user)
            client.pass_(login.password or "")
        except poplib.error_proto as exc:
            raise ConnectivityError(
                f"Authentication failed for {login.user}: the server answered {server_answer(exc)}"
            ) from None
        listing = _uidl_listing(client.uidl()[1], result)
        delete = listener.after_processing == AfterProcessing.DELETE.value
        stored_uidls = _stored_uidls(listener, [u for _, u in listing])
        if delete:
            # Stored in an earlier poll that stopped before deleting them.
            for number, uidl in listing:
                if uidl in stored_uidls:
                    client.dele(number)
        new = [(n, u) for n, u in listing if u not in stored_uidls]
        sizes = _pop3_sizes(client.list()[1]) if new else {}
        for batch in _batches(new, listener.max_batch, result, until):
            items = []
            for number, uidl in batch:
                # A line may be as long as the message (mail without line breaks): one over
                # the size limit is read whole too, and kept in quarantine.
                client.max_line = max(listener.max_message_bytes, sizes.get(number, 0))
                lines = client.retr(number)[1]
                items.append((_Identity(uidl=uidl), b"\r\n".join(lines) + b"\r\n"))
            # A message left on the server and skipped as a Message-ID duplicate would be
            # fetched again at every poll: only when it is deleted after is that check safe.
            storing = _store_batch(listener, items, "pop3", result, by_message_id=delete)
            _commit_batch(listener, storing, committed)
            if delete:
                for number, _ in batch:
                    client.dele(number)
        # QUIT is what makes the server delete the messages marked with DELE.
        client.quit()
    finally:
        client.close()
    return result


# -- Microsoft Graph ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _GraphMailbox:
    """What every Graph request of a poll needs: where, as whom, and with which token."""

    url: str
    upn: str
    token: str
    settings: OAuthSettings
    policy: HostPolicy


def _graph_mailbox(account: EmailAccount) -> _GraphMailbox:
    profile = account.receiver_auth_profile
    token = _token(profile)  # raises ConnectivityError when there is no profile
    assert profile is not None
    policy = host_policy()
    try:
        check_url(profile.graph_url, policy)
    except OAuthError as exc:
        raise ConnectivityError(str(exc)) from None
    return _GraphMailbox(
        profile.graph_url, account.graph_receiver_upn, token, oauth_settings(profile), policy
    )


def _graph_folder_id(mailbox: _GraphMailbox, name: str, folders: list[tuple[str, str]]) -> str:
    """The id of the folder at path `name` (`Inbox/Approvals`, any letter case) or with that
    id. Raises ConnectivityError."""
    wanted = graph.folder_key(name)
    for folder_id, path in folders:
        if wanted == graph.folder_key(path) or name == folder_id:
            return folder_id
    raise ConnectivityError(f"The mailbox {mailbox.upn} has no folder {name}.")


def _stored_graph_ids(listener: EmailListener, graph_ids: list[str]) -> set[str]:
    return {
        g
        for g in db.session.scalars(
            select(InboundMessage.graph_id).where(
                InboundMessage.account_id == listener.account_id,
                InboundMessage.graph_id.in_(graph_ids),
            )
        )
        if g is not None
    }


def _graph_after(
    mailbox: _GraphMailbox, listener: EmailListener, ids: list[str], destination: str
) -> None:
    m = mailbox
    for message_id in ids:
        graph.after_processing(
            m.url, m.upn, m.token, m.settings, m.policy, message_id,
            listener.after_processing, destination,
        )  # fmt: skip


def _poll_graph(listener: EmailListener, committed: Committed, until: float | None) -> PollResult:
    result = PollResult()
    m = _graph_mailbox(listener.account)
    wanted = [listener.folder, listener.move_to_folder]
    folders = graph.list_folders(m.url, m.upn, m.token, m.settings, m.policy, toward=wanted)
    folder_id = _graph_folder_id(m, listener.folder, folders)
    destination = ""
    if listener.after_processing == AfterProcessing.MOVE.value:
        destination = _graph_folder_id(m, listener.move_to_folder, folders)
    link = listener.graph_delta_link
    restarted = False
    followed: set[str] = set()
    while True:
        try:
            page = graph.delta_page(
                m.url, m.upn, m.token, m.settings, m.policy, folder_id, link, listener.max_batch
            )
        except DeltaExpired:
            if restarted:
                raise
            # Graph forgets delta state after a while: list the folder again (once); what is
            # stored already is recognised by its id.
            log.info("listener %s: delta link expired, listing the folder again", listener.id)
            link, restarted = None, True
            continue
        # Messages moved or deleted out of the folder come back as "@removed": nothing to fetch.
        # An id is stored at most 255 characters long; one listed twice is one message.
        present = list(
            {
                str(item["id"]): item
                for item in page.messages
                if "@removed" not in item and _graph_id_fits(str(item["id"]), result)
            }.values()
        )
        stored = _stored_graph_ids(listener, [str(item["id"]) for item in present])
        # Stored in an earlier poll that stopped before acting on them, or changed since (a
        # message marked read comes back once as changed): act on those still unread.
        left = [
            str(item["id"])
            for item in present
            if str(item["id"]) in stored
            and not (listener.after_processing == "mark_read" and item.get("isRead"))
        ]
        _graph_after(m, listener, left, destination)
        new = [str(item["id"]) for item in present if str(item["id"]) not in stored]
        result.fetched += len(present) - len(new)
        result.duplicates += len(present) - len(new)
        items: list[tuple[_Identity, bytes]] = []
        fetched: list[str] = []
        for message_id in new:
            # Each message is a request of its own: a time limit is looked at between them.
            if fetched and _past(until):
                result.more = True
                break
            mime = graph.message_mime(m.url, m.upn, m.token, m.settings, m.policy, message_id)
            items.append((_Identity(folder=listener.folder, graph_id=message_id), mime))
            fetched.append(message_id)
        # Stored even when its Message-ID is known (ingesting counts it as a copy): a message
        # skipped here would, once marked read, come back changed in every delta and be fetched
        # again each time.
        storing = _store_batch(listener, items, "graph", result, by_message_id=False)
        _commit_batch(listener, storing, committed)
        _graph_after(m, listener, fetched, destination)
        if page.delta_link and not result.more:
            # Only once every message listed is stored and acted on: a poll that stops
            # earlier starts again from the previous link and finds them stored.
            listener.graph_delta_link = page.delta_link
            db.session.commit()
            return result
        if result.more or _past(until):
            # The delta link is not reached: the next poll reads these pages again from the
            # previous one and finds their messages stored.
            result.more = True
            return result
        link = page.next_link
        if link is None or link in followed:
            raise GraphError(
                "Microsoft Graph led back to a page of this folder's delta already read; the "
                "poll stopped. What was stored is kept; the next poll starts over from the "
                "last complete delta."
            )
        followed.add(link)


def _graph_id_fits(graph_id: str, result: PollResult) -> bool:
    if len(graph_id) <= 255:
        return True
    result.errors.append(
        f"Microsoft Graph listed a message with an id of {len(graph_id)} characters, more than "
        "255; it was left in the mailbox."
    )
    return False


def graph_folders(account: EmailAccount) -> list[str]:
    """The paths of a Graph mailbox's folders (`Inbox/Approvals` for one below Inbox).
    Raises ConnectivityError."""
    m = _graph_mailbox(account)
    try:
        folders = graph.list_folders(m.url, m.upn, m.token, m.settings, m.policy, TEST_TIMEOUT)
    except GraphError as exc:
        raise ConnectivityError(str(exc)) from None
    return [name for _, name in folders]


# -- polling ------------------------------------------------------------------------------------


def enqueue_ingest(inbound_ids: list[int]) -> None:
    """Hand one committed batch to the ingest workers: one job per batch, not per message."""
    from redis.exceptions import RedisError

    from workers.inbound import enqueue_ingest as enqueue

    try:
        enqueue(inbound_ids)
    except RedisError:
        # Stored is what counts: the reconciler enqueues messages left waiting.
        log.warning(
            "job queue unavailable; %d stored messages wait for the reconciler", len(inbound_ids)
        )


def poll(
    listener: EmailListener, committed: Committed = enqueue_ingest, until: float | None = None
) -> PollResult:
    """Fetch new messages of `listener`, store and commit them, then apply after-processing.

    With `until` (a `time.monotonic()` value), no batch (Graph: page) is started after it,
    except the first: what is left waits on the server for the next poll (`result.more`).

    Connection and server failures do not raise: they end up in the result's errors and in the
    listener's health. Raises ReceivingError when the account's protocol cannot be polled.
    """
    account = listener.account
    protocol = account.receiver_protocol
    if protocol not in ("imap", "pop3", "graph"):
        raise ReceivingError(f"Listeners cannot poll with {protocol}.")
    endpoint = receiver_endpoint(account)
    result = PollResult()
    try:
        if protocol == "graph":
            result = _poll_graph(listener, committed, until)
        else:
            login = _mailbox_login(account)
            run = _poll_imap if protocol == "imap" else _poll_pop3
            result = run(listener, endpoint, login, committed, until)
    except GraphError as exc:
        db.session.rollback()
        result.errors.append(str(exc))
    except SecretError:
        db.session.rollback()
        result.errors.append(UNDECRYPTABLE)
    except (ConnectivityError, HostRefused) as exc:
        db.session.rollback()
        result.errors.append(str(exc))
    except (imaplib.IMAP4.error, poplib.error_proto) as exc:
        db.session.rollback()
        result.errors.append(f"{endpoint.where} refused: {server_answer(exc)}")
    except (OSError, EOFError) as exc:
        db.session.rollback()
        result.errors.append(explain(exc, endpoint))
    except Exception as exc:
        # An answer the code above does not expect: the health page says so instead of the
        # listener looking healthy while every poll fails. The batches committed stay.
        db.session.rollback()
        log.exception("poll of listener %s failed", listener.id)
        result.errors.append(
            f"The poll stopped on an unexpected answer or error ({type(exc).__name__}: "
            f"{str(exc)[:200]}); the worker's log has the details."
        )
    listener.last_poll_at = utcnow()
    listener.last_poll_ok = result.ok
    listener.last_error = "; ".join(result.errors)
    db.session.commit()
    return result


def server_folders(account: EmailAccount) -> list[str]:
    """The folders the account's server lists (["INBOX"] for POP3), INBOX first.

    Raises ConnectivityError with one sentence when the server cannot be asked.
    """
    if account.receiver_protocol == "pop3":
        return ["INBOX"]
    if account.receiver_protocol == "graph":
        try:
            names = graph_folders(account)
        except SecretError:
            raise ConnectivityError(UNDECRYPTABLE) from None
        # Inbox and the folders below it first, then the others, each parent before its children.
        return sorted(
            names,
            key=lambda name: (name.split("/")[0].casefold() != "inbox", name.casefold().split("/")),
        )
    if account.receiver_protocol != "imap":
        raise ConnectivityError("Only IMAP accounts have folders to pick from here.")
    endpoint = _for_test(receiver_endpoint(account))
    try:
        with _imap_session(endpoint, _mailbox_login(account), host_policy()) as client:
            names = [name for flags, _, name in client.list_folders() if b"\\Noselect" not in flags]
    except SecretError:
        raise ConnectivityError(UNDECRYPTABLE) from None
    except HostRefused as exc:
        raise ConnectivityError(str(exc)) from None
    except (imaplib.IMAP4.error, OSError, EOFError) as exc:
        raise ConnectivityError(explain(exc, endpoint)) from None
    return sorted(names, key=lambda name: (name.upper() != "INBOX", name.lower()))


@contextlib.contextmanager
def idle_connection(listener: EmailListener) -> Iterator[Any]:
    """An IMAP connection to the listener's account with its folder selected, for IDLE.

    Raises ConnectivityError when the account is not IMAP, cannot be reached, or its server
    does not offer IDLE.
    """
    account = listener.account
    if account.receiver_protocol != "imap":
        raise ConnectivityError("IDLE is an IMAP command; this listener's account is not IMAP.")
    endpoint = receiver_endpoint(account)
    try:
        with _imap_session(endpoint, _mailbox_login(account), host_policy()) as client:
            if not client.has_capability("IDLE"):
                raise ConnectivityError(f"{endpoint.where} does not offer IDLE.")
            client.select_folder(listener.folder, readonly=True)
            yield client
    except SecretError:
        raise ConnectivityError(UNDECRYPTABLE) from None
    except HostRefused as exc:
        raise ConnectivityError(str(exc)) from None
    except (imaplib.IMAP4.error, OSError, EOFError) as exc:
        raise ConnectivityError(explain(exc, endpoint)) from None
