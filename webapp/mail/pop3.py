"""POP3 connections for receiving: connect, secure, sign in, count messages."""

from __future__ import annotations

import contextlib
import poplib
import socket
import ssl

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
from webapp.mail.imap import MailboxLogin

MODE_LABELS = {"none": "default", "ssl": "SSL/TLS"}


class _POP3(poplib.POP3):
    """poplib's client, connecting through a policy-checked socket (and TLS for SSL/TLS)."""

    def __init__(self, endpoint: Endpoint, policy: HostPolicy, max_line: int = 2048) -> None:
        self._endpoint = endpoint
        self._policy = policy
        # poplib refuses lines over 2048 bytes, which a message without line breaks has.
        self.max_line = max_line
        super().__init__(endpoint.host, endpoint.port, timeout=endpoint.read_timeout)

    def _getline(self) -> tuple[bytes, int]:
        limit = max(self.max_line, 2048) + 2  # and its line ending
        line = self.file.readline(limit + 1)
        if len(line) > limit:
            raise poplib.error_proto("-ERR line too long")
        if not line:
            raise poplib.error_proto("-ERR EOF")
        # A server may end a line with CRLF, LF, or (leading) CR.
        if line.endswith(b"\r\n"):
            return line[:-2], len(line)
        if line.startswith(b"\r"):
            return line[1:-1], len(line)
        return line[:-1], len(line)

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = open_socket(self._endpoint, self._policy)
        if self._endpoint.security == "ssl":
            return self._endpoint.tls_context().wrap_socket(sock, server_hostname=self.host)
        return sock


def check_pop3(endpoint: Endpoint, login: MailboxLogin, policy: HostPolicy) -> str:
    """Connect, secure, sign in and count the messages; returns what was used.

    Raises ConnectivityError with one sentence saying what went wrong.
    """
    if endpoint.security not in MODE_LABELS:
        raise ConnectivityError("POP3 connects either with SSL/TLS or without encryption.")
    client: _POP3 | None = None
    try:
        client = _POP3(endpoint, policy)
        try:
            client.user(login.user)
            client.pass_(login.password or "")
        except poplib.error_proto as exc:
            raise ConnectivityError(
                f"Authentication failed for {login.user}: the server answered {server_answer(exc)}"
            ) from None
        count, _size = client.stat()
        version = tls_version(client.sock)
        with contextlib.suppress(poplib.error_proto, OSError):
            client.quit()
    except ConnectivityError:
        raise
    except (OSError, poplib.error_proto, ssl.SSLError, EOFError) as exc:
        raise ConnectivityError(explain(exc, endpoint)) from None
    finally:
        if client is not None:
            client.close()
    security = version if version else INSECURE
    noun = "message" if count == 1 else "messages"
    return (
        f"POP3 ({MODE_LABELS[endpoint.security]}) {security} as {login.user} {DASH} {count} {noun}"
    )
