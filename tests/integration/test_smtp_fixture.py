"""The smtp_server fixture itself, driven by the standard library's smtplib."""

from __future__ import annotations

import json
import smtplib
import ssl
import threading
from collections.abc import Callable

import pytest

from tests.fixtures.smtp import Security, SmtpServer, StartSmtpServer
from tests.fixtures.tls import TestPKI

TIMEOUT = 5.0
USERS = {"alice": "correct horse"}
TOKENS = {"alice@example.com": "ya29.good-token"}

# CRLF line ends and a leading dot (dot-stuffed on the wire) and 8-bit UTF-8: the server must hand
# back exactly these bytes.
MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: Case Desk <desk@example.com>\r\n"
    b"Subject: Broken heater\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"The heater in the caf\xc3\xa9 is broken.\r\n"
    b".This line starts with a dot.\r\n"
)


def connect(server: SmtpServer, ca: TestPKI) -> smtplib.SMTP:
    """An smtplib client that has said EHLO, over whatever encryption the server expects."""
    client: smtplib.SMTP
    if server.security == "smtps":
        client = smtplib.SMTP_SSL(
            server.host, server.port, context=ca.ssl_client_context(), timeout=TIMEOUT
        )
    else:
        client = smtplib.SMTP(server.host, server.port, timeout=TIMEOUT)
        if server.security == "starttls":
            client.starttls(context=ca.ssl_client_context())
    client.ehlo()
    return client


def send(client: smtplib.SMTP) -> None:
    # The envelope differs from the headers on purpose (a Bcc-like extra recipient).
    client.sendmail("bounces@example.com", ["desk@example.com", "audit@example.com"], MESSAGE)


def xoauth2(user: str, token: str, challenges: list[bytes]) -> Callable[..., str]:
    """An smtplib authobject for XOAUTH2 that records any error challenge it is sent."""

    def respond(challenge: bytes | None = None) -> str:
        if challenge:
            # The server refused the token and sent its JSON error; XOAUTH2 answers with nothing.
            challenges.append(challenge)
            return ""
        return f"user={user}\x01auth=Bearer {token}\x01\x01"

    return respond


def test_plain_send_is_captured_with_envelope_and_exact_bytes(
    smtp_server: StartSmtpServer, test_ca: TestPKI
) -> None:
    server = smtp_server()
    assert (server.host, server.security) == ("127.0.0.1", "none")
    assert server.port > 0

    with connect(server, test_ca) as client:
        assert "starttls" not in client.esmtp_features
        assert "auth" not in client.esmtp_features
        send(client)

    (message,) = server.wait_for(1)
    assert message.mail_from == "bounces@example.com"
    assert message.rcpt_tos == ["desk@example.com", "audit@example.com"]
    assert message.raw == MESSAGE
    assert message.auth_login is None
    assert message.tls is False
    assert message.parsed["Subject"] == "Broken heater"
    assert "café" in message.parsed.get_content()
    assert server.auth_mechanisms_used == []


def test_starttls_with_a_client_trusting_the_test_ca(
    smtp_server: StartSmtpServer, test_ca: TestPKI
) -> None:
    server = smtp_server(security="starttls")

    with smtplib.SMTP(server.host, server.port, timeout=TIMEOUT) as client:
        client.ehlo()
        assert "starttls" in client.esmtp_features
        client.starttls(context=test_ca.ssl_client_context())
        send(client)

    (message,) = server.wait_for(1)
    assert message.tls is True
    assert message.raw == MESSAGE


def test_smtps_with_a_client_trusting_the_test_ca(
    smtp_server: StartSmtpServer, test_ca: TestPKI
) -> None:
    server = smtp_server(security="smtps")

    with connect(server, test_ca) as client:
        assert "starttls" not in client.esmtp_features
        send(client)

    (message,) = server.wait_for(1)
    assert message.tls is True
    assert message.raw == MESSAGE


def test_smtps_fails_verification_without_the_test_ca(
    smtp_server: StartSmtpServer, test_ca: TestPKI
) -> None:
    server = smtp_server(security="smtps")
    # A context with no CA at all rather than the system store: these machines point
    # SSL_CERT_FILE at their own bundle, and the result must not depend on what is in it.
    untrusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL(server.host, server.port, context=untrusting, timeout=TIMEOUT)

    # The refused handshake must not have broken the server for the next client.
    with connect(server, test_ca) as client:
        send(client)
    assert len(server.wait_for(1)) == 1


@pytest.mark.parametrize("security", ["none", "starttls", "smtps"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_password_auth_succeeds_with_the_right_password(
    smtp_server: StartSmtpServer, test_ca: TestPKI, mechanism: str, security: Security
) -> None:
    server = smtp_server(security=security, auth=USERS)

    with connect(server, test_ca) as client:
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        client.user, client.password = "alice", USERS["alice"]
        code, _ = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
        assert code == 235
        send(client)

    (message,) = server.wait_for(1)
    assert message.auth_login == "alice"
    assert server.auth_mechanisms_used == [mechanism]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_password_auth_fails_with_a_wrong_password(
    smtp_server: StartSmtpServer, test_ca: TestPKI, mechanism: str
) -> None:
    server = smtp_server(auth=USERS)

    with connect(server, test_ca) as client:
        client.user, client.password = "alice", "wrong"
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
    assert refused.value.smtp_code == 535
    assert server.auth_mechanisms_used == [mechanism]


def test_starttls_server_offers_auth_only_after_starttls(
    smtp_server: StartSmtpServer, test_ca: TestPKI
) -> None:
    server = smtp_server(security="starttls", auth=USERS)

    with smtplib.SMTP(server.host, server.port, timeout=TIMEOUT) as client:
        client.ehlo()
        assert "auth" not in client.esmtp_features
        client.starttls(context=test_ca.ssl_client_context())
        client.ehlo()
        client.login("alice", USERS["alice"])


@pytest.mark.parametrize("initial_response", [True, False], ids=["initial-response", "challenge"])
def test_xoauth2_succeeds_with_the_right_token(
    smtp_server: StartSmtpServer, test_ca: TestPKI, initial_response: bool
) -> None:
    server = smtp_server(security="starttls", xoauth2_tokens=TOKENS)
    challenges: list[bytes] = []

    with connect(server, test_ca) as client:
        assert client.esmtp_features["auth"].split() == ["XOAUTH2"]
        authobject = xoauth2("alice@example.com", TOKENS["alice@example.com"], challenges)
        code, _ = client.auth("XOAUTH2", authobject, initial_response_ok=initial_response)
        assert code == 235
        send(client)

    assert challenges == []
    (message,) = server.wait_for(1)
    assert message.auth_login == "alice@example.com"
    assert server.auth_mechanisms_used == ["XOAUTH2"]


def test_xoauth2_fails_with_a_wrong_token_the_way_gmail_does(
    smtp_server: StartSmtpServer, test_ca: TestPKI
) -> None:
    server = smtp_server(security="starttls", xoauth2_tokens=TOKENS)
    challenges: list[bytes] = []

    with connect(server, test_ca) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.auth("XOAUTH2", xoauth2("alice@example.com", "ya29.expired", challenges))
        # Refused, but the session is still usable: a wrong token is not a protocol error.
        assert client.noop()[0] == 250

    assert refused.value.smtp_code == 535
    # First a 334 carrying the JSON error, which the client answered with an empty line.
    (challenge,) = challenges
    assert json.loads(challenge)["status"] == "401"


def test_malformed_xoauth2_response_is_a_syntax_error(
    smtp_server: StartSmtpServer, test_ca: TestPKI
) -> None:
    server = smtp_server(xoauth2_tokens=TOKENS)

    with (
        connect(server, test_ca) as client,
        pytest.raises(smtplib.SMTPAuthenticationError) as refused,
    ):
        client.auth("XOAUTH2", lambda challenge=None: "user=alice@example.com")
    assert refused.value.smtp_code == 501


def test_excluded_plain_is_not_advertised_and_is_refused(
    smtp_server: StartSmtpServer, test_ca: TestPKI
) -> None:
    server = smtp_server(auth=USERS, mechanisms=["LOGIN"])

    with connect(server, test_ca) as client:
        assert client.esmtp_features["auth"].split() == ["LOGIN"]
        client.user, client.password = "alice", USERS["alice"]
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.auth("PLAIN", client.auth_plain)
        assert refused.value.smtp_code == 504
        # smtplib's login() picks from what is advertised, so it must choose LOGIN.
        client.login("alice", USERS["alice"])

    assert server.auth_mechanisms_used == ["PLAIN", "LOGIN"]


def test_mechanism_without_credentials_is_rejected(smtp_server: StartSmtpServer) -> None:
    with pytest.raises(ValueError, match="XOAUTH2"):
        smtp_server(auth=USERS, mechanisms=["XOAUTH2"])


def test_require_auth_refuses_mail_before_auth(
    smtp_server: StartSmtpServer, test_ca: TestPKI
) -> None:
    server = smtp_server(auth=USERS, require_auth=True)

    with connect(server, test_ca) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            send(client)
        assert refused.value.smtp_code == 530
        client.rset()
        client.login("alice", USERS["alice"])
        send(client)

    assert [m.auth_login for m in server.wait_for(1)] == ["alice"]


def test_wait_for_raises_a_clear_error_on_timeout(smtp_server: StartSmtpServer) -> None:
    server = smtp_server()

    with pytest.raises(AssertionError, match=r"expected 1 message\(s\) within 0.2s, got 0"):
        server.wait_for(1, timeout=0.2)


def test_wait_for_sees_messages_sent_from_another_thread(
    smtp_server: StartSmtpServer, test_ca: TestPKI
) -> None:
    server = smtp_server()

    def deliver() -> None:
        with connect(server, test_ca) as client:
            send(client)
            send(client)

    sender = threading.Thread(target=deliver)
    sender.start()
    try:
        messages = server.wait_for(2)
    finally:
        sender.join(TIMEOUT)
    assert [m.raw for m in messages] == [MESSAGE, MESSAGE]


def test_each_call_starts_a_separate_server(smtp_server: StartSmtpServer, test_ca: TestPKI) -> None:
    first, second = smtp_server(), smtp_server()
    assert first.port != second.port

    with connect(second, test_ca) as client:
        send(client)

    assert len(second.wait_for(1)) == 1
    assert first.messages == []
