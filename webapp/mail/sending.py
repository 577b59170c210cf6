"""Handing built messages to a server: SMTP sessions that carry many messages, and Microsoft
Graph's sendMail with the raw MIME message.

Pure I/O, no database: each send returns a `Delivery` that says what the server answered and
whether trying again later can help. Nothing here raises for a refused message.
"""

from __future__ import annotations

import atexit
import contextlib
import hmac
import os
import secrets
import smtplib
import ssl
import threading
import time
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import requests

from webapp.mail.connect import ConnectivityError, Endpoint, explain, server_answer
from webapp.mail.graph import GraphSendError, send_mime
from webapp.mail.hostpolicy import HostPolicy
from webapp.mail.oauth import OAuthSettings, http_session
from webapp.mail.smtp import _SMTP, SmtpLogin, open_smtp

# Graph answers worth another try later: throttled, token expired, or trouble on its side.
_GRAPH_TEMPORARY = frozenset({401, 408, 429})


class Outcome(StrEnum):
    SENT = "sent"  # the server took the message (some recipients may have been refused)
    RETRY = "retry"  # a temporary failure: try again later
    FAILED = "failed"  # refused for good


@dataclass(frozen=True)
class Delivery:
    outcome: Outcome
    answer: str  # the server's answer, or what went wrong, in one line
    refused: dict[str, str] = field(default_factory=dict)  # recipient -> answer, when sent


def _smtp_answer(code: int, text: bytes | str) -> str:
    return f"{code} {server_answer(text)}".strip()


def _by_code(code: int, answer: str) -> Delivery:
    # RFC 5321 4.2.1: 4yz is a transient failure, 5yz a permanent one.
    return Delivery(Outcome.RETRY if 400 <= code < 500 else Outcome.FAILED, answer)


# A kept connection is reused for this long after it was opened at most, then closed and
# opened again: a server's view of a long session (limits, a revoked sign-in) starts afresh.
REUSE_SECONDS = 300.0
# Connections kept at most in a process (one per account and settings); the ones due to
# expire soonest are closed first.
MAX_KEPT = 16
# How long saying QUIT to a kept connection may wait for the server's answer.
QUIT_SECONDS = 2.0
# How long the check of a kept connection before its reuse may wait for the server's answer.
CHECK_SECONDS = 5.0


@dataclass
class _Kept:
    client: _SMTP
    opened: float  # time.monotonic() when it was opened
    expires: float


class SmtpPool:
    """SMTP connections kept open between batches, so that the next batch from the same account
    goes out without connecting, TLS and signing in again.

    A connection is kept under everything it was opened with (see `SmtpSession`): a changed
    server, security, local host name or sign-in opens a new one. It is kept for the seconds its
    batch asked, taken for a batch that starts within REUSE_SECONDS of its opening, and checked
    with RSET before it is reused, so that one the server closed meanwhile is replaced before
    any message is handed to it. A child process forgets its parent's connections; the process
    says QUIT to the ones it still keeps when it exits.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[Hashable, _Kept] = {}

    def take(self, key: Hashable) -> tuple[_SMTP, float] | None:
        """A live kept connection for `key` and when it was opened, or None.

        The check is RSET: it proves the server still answers and starts a clean transaction
        whatever the last one left. It waits CHECK_SECONDS at most (a connection that silently
        went dead costs that, not the account's read timeout); expired connections of other
        keys are left to `give`, so that the thread that sends never waits on them.
        """
        now = time.monotonic()
        with self._lock:
            entry = self._kept.pop(key, None)
        if entry is None:
            return None
        if entry.expires <= now:
            _quit_all([entry])
            return None
        if not _reset(entry.client, CHECK_SECONDS):
            entry.client.close()
            return None
        return entry.client, entry.opened

    def give(self, key: Hashable, client: _SMTP, opened: float, keep_seconds: float) -> None:
        """Keep `client` (a connection between messages) for `keep_seconds`, or say QUIT now
        when that is 0 or its time for reuse is over."""
        now = time.monotonic()
        expires = min(now + keep_seconds, opened + REUSE_SECONDS)
        entry = _Kept(client, opened, expires)
        if expires <= now:
            _quit_all([entry])
            return
        with self._lock:
            closing = self._expired(now)
            previous = self._kept.pop(key, None)
            if previous is not None:
                closing.append(previous)
            self._kept[key] = entry
            while len(self._kept) > MAX_KEPT:
                soonest = min(self._kept, key=lambda k: self._kept[k].expires)
                closing.append(self._kept.pop(soonest))
        _quit_all(closing)

    def clear(self) -> None:
        """Say QUIT to every kept connection."""
        with self._lock:
            closing = list(self._kept.values())
            self._kept.clear()
        _quit_all(closing)

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)

    def _expired(self, now: float) -> list[_Kept]:
        gone = [key for key, entry in self._kept.items() if entry.expires <= now]
        return [self._kept.pop(key) for key in gone]

    def _forget(self) -> None:
        # In a forked child: the sockets are the parent's sessions; leave them to it.
        self._lock = threading.Lock()
        self._kept = {}


def _reset(client: _SMTP, within: float | None = None) -> bool:
    """Whether the server answers RSET with 250, waiting `within` seconds at most (else the
    connection's own timeout): the connection is alive and outside any transaction."""
    sock = client.sock
    if sock is None:
        return False
    timeout = sock.gettimeout()
    try:
        if within is not None:
            sock.settimeout(within if timeout is None else min(timeout, within))
        code, _ = client.rset()
        sock.settimeout(timeout)
    except (OSError, smtplib.SMTPException):
        return False
    return code == 250


def _quit_all(entries: Sequence[_Kept]) -> None:
    for entry in entries:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            if entry.client.sock is not None:
                entry.client.sock.settimeout(QUIT_SECONDS)
            entry.client.quit()
        entry.client.close()


SMTP_POOL = SmtpPool()
atexit.register(SMTP_POOL.clear)
os.register_at_fork(after_in_child=SMTP_POOL._forget)


@dataclass(frozen=True)
class Keep:
    """Keep a batch's connection in `pool` for `seconds` after the batch, for the next batch of
    `owner` (the account) opened with the same settings."""

    owner: Hashable
    seconds: float
    pool: SmtpPool = SMTP_POOL


# Keys the digest of a password or token in a kept connection's key; never leaves the process.
_LOGIN_KEY = secrets.token_bytes(32)


def _login_key(login: SmtpLogin | None) -> Hashable:
    # A keyed digest, not the secret itself: the key outlives the batch. An OAuth token is
    # cached until shortly before it expires, so a connection signed in with it is reused while
    # it is the account's token, and a new token (refreshed, or of a changed profile) signs in
    # on a new connection.
    if login is None:
        return None
    if login.oauth_token is not None:
        return (login.user, "xoauth2", _digest(login.oauth_token))
    return (login.user, _digest(login.password or ""), login.plain_disabled, login.login_disabled)


def _digest(secret: str) -> bytes:
    return hmac.digest(_LOGIN_KEY, secret.encode(), "sha256")


class SmtpSession:
    """One SMTP connection for a batch of messages from one account.

    The connection opens on the first send and is reused for the next ones. When it cannot be
    opened, every message of the batch gets that temporary failure without another attempt; when
    the server drops it halfway, the next message opens a new one, once. With `keep`, the
    connection is taken from the pool when one is kept for the same account and settings, and
    given back when the batch ends without an error.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        login: SmtpLogin | None,
        policy: HostPolicy,
        local_hostname: str | None = None,
        keep: Keep | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._login = login
        self._policy = policy
        self._local_hostname = local_hostname
        self._keep = keep
        self._key = (
            (keep.owner, endpoint, policy, local_hostname, _login_key(login)) if keep else None
        )
        self._client: _SMTP | None = None
        self._opened = 0.0
        self._broken: Delivery | None = None
        self._reconnected = False

    def __enter__(self) -> SmtpSession:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is None:
            self.release()
        else:
            self.close()

    def _connect(self) -> Delivery | None:
        """Open the connection; the failure every message gets when it cannot be opened."""
        if self._keep is not None:
            kept = self._keep.pool.take(self._key)
            if kept is not None:
                self._client, self._opened = kept
                return None
        try:
            self._opened = time.monotonic()
            self._client = open_smtp(
                self._endpoint, self._login, self._policy, self._local_hostname
            )
        except smtplib.SMTPAuthenticationError as exc:
            user = self._login.user if self._login else ""
            failure = f"Sign-in as {user} failed: {_smtp_answer(exc.smtp_code, exc.smtp_error)}"
        except smtplib.SMTPResponseException as exc:
            failure = (
                f"{self._endpoint.where} refused the connection: "
                f"{_smtp_answer(exc.smtp_code, exc.smtp_error)}"
            )
        except ConnectivityError as exc:
            failure = str(exc)
        except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
            failure = explain(exc, self._endpoint)
        else:
            return None
        # Temporary: the server may be back, or the admin may fix the account, before the
        # message runs out of attempts.
        self._broken = Delivery(Outcome.RETRY, failure)
        return self._broken

    def send(self, sender: str, recipients: Sequence[str], raw: bytes) -> Delivery:
        """Send `raw` to `recipients` with `sender` as the envelope sender."""
        if self._broken is not None:
            return self._broken
        if self._client is None:
            failure = self._connect()
            if failure is not None:
                return failure
        assert self._client is not None
        try:
            refused = self._client.sendmail(sender, list(recipients), raw)
        except smtplib.SMTPRecipientsRefused as exc:
            answers = {
                str(rcpt): _smtp_answer(code, text) for rcpt, (code, text) in exc.recipients.items()
            }
            temporary = any(400 <= code < 500 for code, _ in exc.recipients.values())
            return Delivery(
                Outcome.RETRY if temporary else Outcome.FAILED,
                "Every recipient was refused: "
                + "; ".join(f"{rcpt}: {answer}" for rcpt, answer in answers.items()),
            )
        except smtplib.SMTPServerDisconnected:
            return self._dropped("The server closed the connection before accepting the message.")
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code == 421:  # the server is closing the connection
                return self._dropped(_smtp_answer(exc.smtp_code, exc.smtp_error))
            self._reset()
            return _by_code(exc.smtp_code, _smtp_answer(exc.smtp_code, exc.smtp_error))
        except (OSError, smtplib.SMTPException) as exc:
            return self._dropped(explain(exc, self._endpoint))
        answers = {rcpt: _smtp_answer(code, text) for rcpt, (code, text) in refused.items()}
        note = "; ".join(f"{rcpt}: {answer}" for rcpt, answer in answers.items())
        return Delivery(
            Outcome.SENT,
            f"Accepted, except for {note}" if note else "Accepted.",
            answers,
        )

    def _reset(self) -> None:
        # smtplib leaves the transaction open when the server refuses the DATA command itself;
        # the next MAIL would then be refused ("nested MAIL command"). A connection that cannot
        # be reset is given up: the next message opens a new one.
        assert self._client is not None
        if not _reset(self._client):
            self._discard()

    def _dropped(self, answer: str) -> Delivery:
        # Without a final answer to DATA the message counts as not delivered (RFC 5321 6.1);
        # should the server have kept it anyway, the later copy carries the same Message-ID,
        # which mail programs show once. A new connection serves the rest of the batch, once.
        self._discard()
        if self._reconnected:
            self._broken = Delivery(Outcome.RETRY, answer)
        self._reconnected = True
        return Delivery(Outcome.RETRY, answer)

    def _discard(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def release(self) -> None:
        """Give the connection to the pool when the session keeps it, else close it."""
        if self._keep is None or self._client is None:
            self.close()
            return
        client, self._client = self._client, None
        self._keep.pool.give(self._key, client, self._opened, self._keep.seconds)

    def close(self) -> None:
        """Say QUIT and close the connection, if one is open."""
        if self._client is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._client.quit()
            self._discard()


class GraphSession:
    """Microsoft Graph sendMail for a batch of messages from one mailbox, on one HTTPS session."""

    def __init__(
        self,
        session: requests.Session,
        graph_url: str,
        upn: str,
        token: str,
        timeout: float,
    ) -> None:
        self._session = session
        self._graph_url = graph_url
        self._upn = upn
        self._token = token
        self._timeout = timeout

    def send(self, sender: str, recipients: Sequence[str], raw: bytes) -> Delivery:
        """Send `raw` as it is; Graph takes the recipients from its To and Cc headers."""
        try:
            send_mime(self._session, self._graph_url, self._upn, self._token, raw, self._timeout)
        except GraphSendError as exc:
            status = exc.status
            temporary = status is None or status in _GRAPH_TEMPORARY or status >= 500
            return Delivery(Outcome.RETRY if temporary else Outcome.FAILED, str(exc))
        return Delivery(Outcome.SENT, "Accepted by Microsoft Graph.")


@contextmanager
def graph_session(
    settings: OAuthSettings,
    policy: HostPolicy,
    graph_url: str,
    upn: str,
    token: str,
    timeout: float = 30,
) -> Iterator[GraphSession]:
    """A GraphSession whose connection closes when the block ends."""
    with http_session(settings, policy) as session:
        yield GraphSession(session, graph_url, upn, token, timeout)


class Sender(Protocol):
    def send(self, sender: str, recipients: Sequence[str], raw: bytes) -> Delivery: ...
