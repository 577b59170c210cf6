"""Handing built messages to a server: SMTP sessions that carry many messages, and Microsoft
Graph's sendMail with the raw MIME message.

Pure I/O, no database: each send returns a `Delivery` that says what the server answered and
whether trying again later can help. Nothing here raises for a refused message.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
from collections.abc import Iterator, Sequence
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


class SmtpSession:
    """One SMTP connection for a batch of messages from one account.

    The connection opens on the first send and is reused for the next ones. When it cannot be
    opened, every message of the batch gets that temporary failure without another attempt; when
    the server drops it halfway, the next message opens a new one, once.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        login: SmtpLogin | None,
        policy: HostPolicy,
        local_hostname: str | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._login = login
        self._policy = policy
        self._local_hostname = local_hostname
        self._client: _SMTP | None = None
        self._broken: Delivery | None = None
        self._reconnected = False

    def __enter__(self) -> SmtpSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connect(self) -> Delivery | None:
        """Open the connection; the failure every message gets when it cannot be opened."""
        try:
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
