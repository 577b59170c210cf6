"""IMAP connections for receiving: connect, secure, sign in, count folders."""

from __future__ import annotations

import contextlib
import imaplib
import socket
import ssl
from dataclasses import dataclass

from webapp.mail.connect import (
    DASH,
    INSECURE,
    ConnectivityError,
    Endpoint,
    explain,
    open_socket,
    server_answer,
    tls_version,
)
from webapp.mail.hostpolicy import HostPolicy

MODE_LABELS = {"none": "default", "starttls": "STARTTLS", "ssl": "SSL/TLS"}


@dataclass(frozen=True)
class MailboxLogin:
    user: str
    password: str | None = None
    oauth_token: str | None = None
    plain_disabled: bool = False


class _IMAP(imaplib.IMAP4):
    """imaplib's client, connecting through a policy-checked socket (and TLS for SSL/TLS)."""

    def __init__(self, endpoint: Endpoint, policy: HostPolicy) -> None:
        self._endpoint = endpoint
        self._policy = policy
        super().__init__(endpoint.host, endpoint.port, timeout=endpoint.read_timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = open_socket(self._endpoint, self._policy)
        if self._endpoint.security == "ssl":
            return self._endpoint.tls_context().wrap_socket(sock, server_hostname=self.host)
        return sock


def _sign_in(client: _IMAP, login: MailboxLogin) -> None:
    if login.oauth_token is not None:
        blob = f"user={login.user}\x01auth=Bearer {login.oauth_token}\x01\x01".encode()
        # A refused token comes back as a challenge holding a JSON error; the answer to it
        # must be empty, after which the server says NO.
        answers = iter([blob, b""])
        client.authenticate("XOAUTH2", lambda _challenge: next(answers, None))
        return
    password = login.password or ""
    if not login.plain_disabled and "AUTH=PLAIN" in client.capabilities:
        secret = f"\0{login.user}\0{password}".encode()
        client.authenticate("PLAIN", lambda _challenge: secret)
    else:
        client.login(login.user, password)


def check_imap(endpoint: Endpoint, login: MailboxLogin, policy: HostPolicy) -> str:
    """Connect, secure, sign in and list the folders; returns what was used.

    Raises ConnectivityError with one sentence saying what went wrong.
    """
    client: _IMAP | None = None
    try:
        client = _IMAP(endpoint, policy)
        if endpoint.security == "starttls":
            if "STARTTLS" not in client.capabilities:
                raise ConnectivityError(f"{endpoint.where} does not offer STARTTLS.")
            client.starttls(endpoint.tls_context())
        try:
            _sign_in(client, login)
        except imaplib.IMAP4.error as exc:
            raise ConnectivityError(
                f"Authentication failed for {login.user}: the server answered {server_answer(exc)}"
            ) from None
        status, folders = client.list()
        if status != "OK":
            raise ConnectivityError(f"{endpoint.where} refused to list the folders.")
        version = tls_version(client.sock)
        count = len([line for line in folders if line])
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            client.logout()
    except ConnectivityError:
        raise
    except (OSError, imaplib.IMAP4.error, ssl.SSLError, EOFError) as exc:
        raise ConnectivityError(explain(exc, endpoint)) from None
    finally:
        if client is not None and client.state != "LOGOUT":
            with contextlib.suppress(OSError):
                client.shutdown()
    security = version if version else INSECURE
    noun = "folder" if count == 1 else "folders"
    return (
        f"IMAP ({MODE_LABELS[endpoint.security]}) {security} as {login.user} {DASH} {count} {noun}"
    )
