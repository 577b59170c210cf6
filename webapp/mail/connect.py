"""Opening a connection to a mail server, and one clear sentence for each way it can fail."""

from __future__ import annotations

import smtplib
import socket
import ssl
from dataclasses import dataclass

from webapp.mail.hostpolicy import HostPolicy, HostRefused, resolve
from webapp.mail.tls import client_context

SYSTEM_TRUSTSTORE = "the system truststore"
# The en dash of the result sentences ("SMTP (Connect using default) \u2013 insecure connection").
DASH = "\u2013"
INSECURE = f"{DASH} insecure connection"
DEFAULT_CONNECT_TIMEOUT = 15.0
DEFAULT_READ_TIMEOUT = 30.0


class ConnectivityError(Exception):
    """A connection test failed; the message is the sentence to show."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect: `security` is none, starttls, ssl (IMAP/POP3) or smtps."""

    host: str
    port: int
    security: str
    tls_min: str
    truststore_pem: str | None = None
    truststore_label: str = SYSTEM_TRUSTSTORE
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext:
        try:
            return client_context(self.tls_min, self.truststore_pem)
        except ValueError as exc:
            raise ConnectivityError(
                f"{self.truststore_label.capitalize()} cannot be used: {exc}."
            ) from None


def open_socket(endpoint: Endpoint, policy: HostPolicy) -> socket.socket:
    """A TCP connection to the first address of the host that answers (not yet TLS).

    Raises ConnectivityError for a refused host, an unknown name, or no address answering.
    """
    try:
        addresses = resolve(endpoint.host, endpoint.port, policy)
    except HostRefused as exc:
        raise ConnectivityError(str(exc)) from None
    except (socket.gaierror, UnicodeError):
        raise ConnectivityError(
            f"DNS name not found: {endpoint.host} does not resolve to an address."
        ) from None
    last: OSError | None = None
    for address in addresses:
        try:
            sock = socket.create_connection((address, endpoint.port), endpoint.connect_timeout)
        except TimeoutError:
            raise ConnectivityError(
                f"Timeout: {endpoint.where} did not accept the connection within "
                f"{endpoint.connect_timeout:g} seconds."
            ) from None
        except OSError as exc:
            last = exc
            continue
        sock.settimeout(endpoint.read_timeout)
        return sock
    assert last is not None
    raise ConnectivityError(explain(last, endpoint)) from None


def explain(exc: BaseException, endpoint: Endpoint) -> str:
    """One sentence that says why talking to `endpoint` failed with `exc`."""
    if isinstance(exc, ConnectivityError):
        return str(exc)
    if isinstance(exc, ConnectionRefusedError):
        return (
            f"Connection refused by {endpoint.where}: nothing listens on that port, "
            "or a firewall rejects the connection."
        )
    if isinstance(exc, smtplib.SMTPServerDisconnected) and isinstance(exc.__context__, OSError):
        # smtplib reports a read timeout or reset as a disconnection; the cause says more.
        return explain(exc.__context__, endpoint)
    if isinstance(exc, TimeoutError):
        return f"Timeout: {endpoint.where} did not answer within {endpoint.read_timeout:g} seconds."
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"The certificate of {endpoint.host} is not trusted by {endpoint.truststore_label}: "
            f"{exc.verify_message}."
        )
    if isinstance(exc, ssl.SSLError):
        if exc.reason in {
            "TLSV1_ALERT_PROTOCOL_VERSION",
            "UNSUPPORTED_PROTOCOL",
            "NO_PROTOCOLS_AVAILABLE",
            "TLSV1_ALERT_INSUFFICIENT_SECURITY",
        }:
            return (
                f"{endpoint.where} offers only a TLS version below the lowest allowed "
                f"(TLS {endpoint.tls_min})."
            )
        if exc.reason == "WRONG_VERSION_NUMBER":
            return (
                f"{endpoint.where} does not speak TLS on this port; check the port and the "
                "security setting."
            )
        return f"The TLS handshake with {endpoint.where} failed: {exc.reason or exc}."
    if isinstance(exc, smtplib.SMTPServerDisconnected | ConnectionResetError | EOFError):
        return f"{endpoint.where} closed the connection unexpectedly."
    if isinstance(exc, OSError):
        return f"Could not talk to {endpoint.where}: {exc.strerror or exc}."
    return f"Could not talk to {endpoint.where}: {exc}."


def server_answer(raw: object) -> str:
    """A server's answer (bytes, text or an exception's first argument) as one sentence."""
    if isinstance(raw, BaseException) and raw.args:
        raw = raw.args[0]
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return " ".join(text.split()).rstrip(".") + "."


def tls_version(sock: object) -> str:
    """The negotiated TLS version of a socket, e.g. "TLSv1.3", or "" for a plain socket."""
    if isinstance(sock, ssl.SSLSocket):
        return sock.version() or ""
    return ""
