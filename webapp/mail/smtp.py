"""SMTP connections for sending: connect, secure, sign in (password or XOAUTH2)."""

from __future__ import annotations

import contextlib
import re
import smtplib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from webapp.mail.connect import (
    INSECURE,
    ConnectivityError,
    Endpoint,
    explain,
    open_socket,
    server_answer,
    tls_version,
)
from webapp.mail.hostpolicy import HostPolicy

if TYPE_CHECKING:
    from _typeshed import SizedBuffer

MODE_LABELS = {
    "none": "Connect using default",
    "starttls": "Connect using STARTTLS",
    "smtps": "Connect using SMTPS",
}


@dataclass(frozen=True)
class SmtpLogin:
    user: str
    password: str | None = None
    oauth_token: str | None = None
    plain_disabled: bool = False
    login_disabled: bool = False


# A plain address (dot-atoms on both sides): what smtplib's quoteaddr makes of it is the
# address in angle brackets, without the cost of its general address parser, which is more
# than half of the client's own time per message.
_PLAIN_ADDRESS_RE = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)


def envelope_address(address: str) -> str:
    """`address` as MAIL FROM and RCPT TO carry it, as smtplib.quoteaddr writes it."""
    if _PLAIN_ADDRESS_RE.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


class _SMTP(smtplib.SMTP):
    """smtplib's client, connecting through a policy-checked socket."""

    _host: str

    def __init__(self, endpoint: Endpoint, policy: HostPolicy, local_hostname: str | None) -> None:
        self._endpoint = endpoint
        self._policy = policy
        super().__init__(local_hostname=local_hostname, timeout=endpoint.read_timeout)
        # STARTTLS checks the certificate against this name; smtplib only sets it when the
        # constructor connects.
        self._host = endpoint.host

    def mail(self, sender: str, options: Sequence[str] = ()) -> tuple[int, bytes]:
        """smtplib's MAIL FROM, with the address written by `envelope_address`."""
        optionlist = ""
        if options and self.does_esmtp:
            if any(option.lower() == "smtputf8" for option in options):
                if not self.has_extn("smtputf8"):
                    raise smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by server")
                self.command_encoding = "utf-8"
            optionlist = " " + " ".join(options)
        self.putcmd("mail", f"FROM:{envelope_address(sender)}{optionlist}")
        return self.getreply()

    def rcpt(self, recip: str, options: Sequence[str] = ()) -> tuple[int, bytes]:
        """smtplib's RCPT TO, with the address written by `envelope_address`."""
        optionlist = " " + " ".join(options) if options and self.does_esmtp else ""
        self.putcmd("rcpt", f"TO:{envelope_address(recip)}{optionlist}")
        return self.getreply()

    def sendmail(
        self,
        from_addr: str,
        to_addrs: str | Sequence[str],
        msg: SizedBuffer | str,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
    ) -> dict[str, tuple[int, bytes]]:
        """smtplib's sendmail, the same answers and exceptions; with a server that offers
        PIPELINING (RFC 2920), as most do, MAIL FROM, the RCPT TOs and DATA go out in one
        write and the message after their answers: two round trips a message instead of
        three plus one per recipient, and fewer waits for the interpreter lock."""
        recipients = [to_addrs] if isinstance(to_addrs, str) else list(to_addrs)
        self.ehlo_or_helo_if_needed()
        if (
            not isinstance(msg, bytes)
            or mail_options
            or rcpt_options
            or not recipients
            or not (self.does_esmtp and self.has_extn("pipelining"))
        ):
            return super().sendmail(from_addr, recipients, msg, mail_options, rcpt_options)
        size = f" SIZE={len(msg)}" if self.has_extn("size") else ""
        commands = [f"MAIL FROM:{envelope_address(from_addr)}{size}"]
        commands += [f"RCPT TO:{envelope_address(rcpt)}" for rcpt in recipients]
        commands.append("DATA")
        if any("\r" in command or "\n" in command for command in commands):
            raise ValueError("command and arguments contain prohibited newline characters")
        self.send("".join(f"{command}\r\n" for command in commands))

        code, answer = self.getreply()
        if code != 250:
            if code == 421:
                self.close()
            else:
                self._answers_after_refusal(len(recipients) + 1)
            raise smtplib.SMTPSenderRefused(code, answer, from_addr)
        refused: dict[str, tuple[int, bytes]] = {}
        for rcpt in recipients:
            code, answer = self.getreply()
            if code not in (250, 251):
                refused[rcpt] = (code, answer)
            if code == 421:
                self.close()
                raise smtplib.SMTPRecipientsRefused(refused)
        if len(refused) == len(recipients):
            self._answers_after_refusal(1)  # DATA's
            raise smtplib.SMTPRecipientsRefused(refused)
        code, answer = self.getreply()
        if code != 354:
            # As smtplib's data(): the transaction stays open; the caller resets it.
            raise smtplib.SMTPDataError(code, answer)
        self.send(_dot_stuffed(msg))
        code, answer = self.getreply()
        if code != 250:
            if code == 421:
                self.close()
            else:
                self._reset_quietly()
            raise smtplib.SMTPDataError(code, answer)
        return refused

    def _answers_after_refusal(self, pending: int) -> None:
        """Read the `pending` answers still due to commands sent in the same write as a refused
        one, end a DATA the server accepted anyway with an empty message, and reset. A server
        that hangs up meanwhile changes nothing: the refusal is what the caller hears, as from
        smtplib."""
        last = 0
        with contextlib.suppress(smtplib.SMTPServerDisconnected):
            for _ in range(pending):
                last = self.getreply()[0]
                if last == 421:
                    self.close()
                    return
            if last == 354:
                self.send(b".\r\n")
                if self.getreply()[0] == 421:
                    self.close()
                    return
            self.rset()

    def _reset_quietly(self) -> None:
        # As smtplib does after a refusal: a server that has hung up needs no reset.
        with contextlib.suppress(smtplib.SMTPServerDisconnected):
            self.rset()

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = open_socket(self._endpoint, self._policy)
        if self._endpoint.security == "smtps":
            return self._endpoint.tls_context().wrap_socket(
                sock, server_hostname=self._endpoint.host
            )
        return sock


_LINE_START_PERIOD_RE = re.compile(rb"^\.", re.MULTILINE)


def _dot_stuffed(message: bytes) -> bytes:
    """`message` as DATA carries it (RFC 5321 4.5.2): a period that starts a line doubled,
    the last line ended, and the line with a single period after it."""
    stuffed = _LINE_START_PERIOD_RE.sub(b"..", message)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def _sign_in(client: _SMTP, login: SmtpLogin) -> None:
    offered = client.esmtp_features.get("auth", "").upper().split()
    if login.oauth_token is not None:
        if "XOAUTH2" not in offered:
            raise ConnectivityError("The server does not offer XOAUTH2 sign-in.")
        blob = f"user={login.user}\x01auth=Bearer {login.oauth_token}\x01\x01"
        # After a refused token the server sends a JSON challenge; the answer must be empty.
        answers = iter([blob, ""])
        client.auth("XOAUTH2", lambda challenge=None: next(answers), initial_response_ok=True)
        return
    allowed = [
        mechanism
        for mechanism, disabled in (
            ("PLAIN", login.plain_disabled),
            ("LOGIN", login.login_disabled),
        )
        if not disabled and mechanism in offered
    ]
    if not allowed:
        raise ConnectivityError(
            "The server offers no password sign-in this account may use "
            f"(offered: {', '.join(offered) or 'none'})."
        )
    client.user, client.password = login.user, login.password or ""
    method = client.auth_plain if allowed[0] == "PLAIN" else client.auth_login
    try:
        client.auth(allowed[0], method, initial_response_ok=True)
    finally:
        client.password = ""  # the connection may be kept open long after signing in


def open_smtp(
    endpoint: Endpoint,
    login: SmtpLogin | None,
    policy: HostPolicy,
    local_hostname: str | None = None,
) -> _SMTP:
    """A connected client, secured and signed in as configured; closed again when any step
    fails, whose smtplib, socket or ConnectivityError exception is raised."""
    client = _SMTP(endpoint, policy, local_hostname)
    try:
        client.connect(endpoint.host, endpoint.port)
        client.ehlo()
        if endpoint.security == "starttls":
            if not client.has_extn("starttls"):
                raise ConnectivityError(f"{endpoint.where} does not offer STARTTLS.")
            client.starttls(context=endpoint.tls_context())
            client.ehlo()
        if login is not None:
            _sign_in(client, login)
    except BaseException:
        client.close()
        raise
    return client


def check_smtp(
    endpoint: Endpoint,
    login: SmtpLogin | None,
    policy: HostPolicy,
    local_hostname: str | None = None,
) -> str:
    """Connect, secure and sign in as configured, then quit; returns what was used.

    Raises ConnectivityError with one sentence saying what went wrong.
    """
    try:
        client = open_smtp(endpoint, login, policy, local_hostname)
        try:
            version = tls_version(client.sock)
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()
        finally:
            client.close()
    except smtplib.SMTPAuthenticationError as exc:
        raise ConnectivityError(
            f"Authentication failed for {login.user if login else ''}: the server answered "
            f"{exc.smtp_code} {server_answer(exc.smtp_error)}"
        ) from None
    except smtplib.SMTPResponseException as exc:
        raise ConnectivityError(
            f"{endpoint.where} refused: {exc.smtp_code} {server_answer(exc.smtp_error)}"
        ) from None
    except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
        raise ConnectivityError(explain(exc, endpoint)) from None
    mode = MODE_LABELS[endpoint.security]
    security = version if version else INSECURE
    who = f" as {login.user}" if login is not None else ""
    return f"SMTP ({mode}) {security}{who}"
