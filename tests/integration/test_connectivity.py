"""Test connectivity against real servers: aiosmtpd for SMTP, Dovecot for IMAP and POP3."""

from __future__ import annotations

import socket
import threading

import pytest

from webapp.extensions import db
from webapp.models import EmailAccount
from webapp.services import accounts
from webapp.services.accounts import check_connectivity

DASH = "\u2013"


def _test(app, pk: int, side: str):
    with app.app_context():
        result = check_connectivity(db.session.get(EmailAccount, pk), side)
        db.session.commit()
        return result


# -- SMTP ---------------------------------------------------------------------------------------


def test_smtp_without_tls_or_sign_in_says_it_is_insecure(app, smtp_server, make_account):
    server = smtp_server()
    pk = make_account(smtp_port=server.port)
    result = _test(app, pk, "sender")
    assert result.ok, result.message
    assert result.message == f"SMTP (Connect using default) {DASH} insecure connection"


def test_smtp_plain_password_uses_auth_plain(app, smtp_server, make_account):
    server = smtp_server(auth={"alice": "s3cret pw"})
    pk = make_account(smtp_port=server.port, smtp_user_id="alice", smtp_password="s3cret pw")
    result = _test(app, pk, "sender")
    assert result.message == f"SMTP (Connect using default) {DASH} insecure connection as alice"
    assert server.auth_mechanisms_used == ["PLAIN"]


def test_smtp_auth_plain_disable_is_honoured(app, smtp_server, make_account):
    server = smtp_server(auth={"alice": "s3cret pw"})
    pk = make_account(
        smtp_port=server.port,
        smtp_user_id="alice",
        smtp_password="s3cret pw",
        smtp_advanced={"mail.smtp.auth.plain.disable": "true"},
    )
    assert _test(app, pk, "sender").ok
    assert server.auth_mechanisms_used == ["LOGIN"]


def test_smtp_plain_only_server_with_plain_disabled_says_so(app, smtp_server, make_account):
    server = smtp_server(auth={"alice": "pw"}, mechanisms=["PLAIN"])
    pk = make_account(
        smtp_port=server.port,
        smtp_user_id="alice",
        smtp_password="pw",
        smtp_advanced={"mail.smtp.auth.plain.disable": "true"},
    )
    result = _test(app, pk, "sender")
    assert not result.ok
    assert result.message == (
        "The server offers no password sign-in this account may use (offered: PLAIN)."
    )


def test_smtp_wrong_password_is_an_authentication_failure(app, smtp_server, make_account):
    server = smtp_server(auth={"alice": "right"})
    pk = make_account(smtp_port=server.port, smtp_user_id="alice", smtp_password="wrong")
    result = _test(app, pk, "sender")
    assert not result.ok
    assert result.message.startswith("Authentication failed for alice: the server answered 535")


def test_smtp_starttls_with_truststore(app, smtp_server, make_account, test_ca_truststore):
    server = smtp_server(security="starttls", auth={"support@example.com": "pw"})
    pk = make_account(
        smtp_port=server.port,
        smtp_security="starttls",
        smtp_password="pw",
        smtp_truststore_id=test_ca_truststore,
    )
    result = _test(app, pk, "sender")
    assert result.message == "SMTP (Connect using STARTTLS) TLSv1.3 as support@example.com"


def test_smtp_starttls_without_truststore_names_the_system_store(app, smtp_server, make_account):
    server = smtp_server(security="starttls")
    pk = make_account(smtp_port=server.port, smtp_security="starttls")
    result = _test(app, pk, "sender")
    assert not result.ok
    assert result.message.startswith(
        "The certificate of 127.0.0.1 is not trusted by the system truststore:"
    )


def test_smtps_with_truststore(app, smtp_server, make_account, test_ca_truststore):
    server = smtp_server(security="smtps")
    pk = make_account(
        smtp_port=server.port, smtp_security="smtps", smtp_truststore_id=test_ca_truststore
    )
    assert _test(app, pk, "sender").message == "SMTP (Connect using SMTPS) TLSv1.3"


def test_smtp_server_without_starttls_is_refused(app, smtp_server, make_account):
    server = smtp_server()
    pk = make_account(smtp_port=server.port, smtp_security="starttls")
    result = _test(app, pk, "sender")
    assert result.message == f"127.0.0.1:{server.port} does not offer STARTTLS."


def test_unknown_host_is_a_dns_failure(app, make_account):
    pk = make_account(smtp_host="mail.example.invalid", smtp_port=587)
    result = _test(app, pk, "sender")
    assert result.message == (
        "DNS name not found: mail.example.invalid does not resolve to an address."
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nothing_listening_is_connection_refused(app, make_account):
    port = _closed_port()
    pk = make_account(smtp_port=port)
    result = _test(app, pk, "sender")
    assert result.message.startswith(f"Connection refused by 127.0.0.1:{port}")


@pytest.fixture
def silent_server():
    """Accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_server_that_never_answers_is_a_timeout(app, make_account, silent_server):
    pk = make_account(smtp_port=silent_server, smtp_advanced={"mail.smtp.timeout": "300"})
    result = _test(app, pk, "sender")
    assert result.message == (
        f"Timeout: 127.0.0.1:{silent_server} did not answer within 0.3 seconds."
    )


def test_test_connectivity_waits_at_most_test_timeout(
    app, make_account, silent_server, monkeypatch
):
    # The account's own ten-minute timeout is for its listeners and senders, not for a page.
    monkeypatch.setattr(accounts, "TEST_TIMEOUT", 0.5)
    pk = make_account(smtp_port=silent_server, smtp_advanced={"mail.smtp.timeout": "600000"})
    results = []
    worker = threading.Thread(target=lambda: results.append(_test(app, pk, "sender")))
    worker.daemon = True
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "Test connectivity kept waiting"
    assert results[0].message == (
        f"Timeout: 127.0.0.1:{silent_server} did not answer within 0.5 seconds."
    )


def test_the_result_is_recorded_on_the_account(app, smtp_server, make_account):
    server = smtp_server()
    pk = make_account(smtp_port=server.port)
    _test(app, pk, "sender")
    with app.app_context():
        account = db.session.get(EmailAccount, pk)
        assert account.sender_test_ok is True
        assert account.sender_tested_at is not None
        assert "insecure connection" in account.sender_test_message


def test_public_only_policy_refuses_loopback_at_test_time(app, smtp_server, make_account):
    server = smtp_server()
    pk = make_account(smtp_port=server.port)
    app.config["CASEMAIL_MAIL_HOST_POLICY"] = "public-only"
    result = _test(app, pk, "sender")
    assert not result.ok
    assert "allows only public mail servers (CASEMAIL_MAIL_HOST_POLICY=public-only)" in (
        result.message
    )


# -- IMAP and POP3 (Dovecot) ----------------------------------------------------------------------


def _receiver(make_account, dovecot, mailbox_user, protocol, security, **fields):
    ports = {
        ("imap", "none"): dovecot.imap_port,
        ("imap", "starttls"): dovecot.imap_port,
        ("imap", "ssl"): dovecot.imaps_port,
        ("pop3", "none"): dovecot.pop3_port,
        ("pop3", "ssl"): dovecot.pop3s_port,
    }
    return make_account(
        receiver_protocol=protocol,
        receiver_port=ports[(protocol, security)],
        receiver_security=security,
        receiver_user_id=mailbox_user.login,
        receiver_password=fields.pop("receiver_password", mailbox_user.password),
        **fields,
    )


def test_imap_plain_counts_folders(app, make_account, dovecot, mailbox_user):
    dovecot.create_folder(mailbox_user.login, "Archive")
    pk = _receiver(make_account, dovecot, mailbox_user, "imap", "none")
    result = _test(app, pk, "receiver")
    assert result.message == (
        f"IMAP (default) {DASH} insecure connection as {mailbox_user.login} {DASH} 2 folders"
    )


def test_imap_starttls_with_truststore(
    app, make_account, dovecot, mailbox_user, test_ca_truststore
):
    pk = _receiver(
        make_account,
        dovecot,
        mailbox_user,
        "imap",
        "starttls",
        receiver_truststore_id=test_ca_truststore,
    )
    result = _test(app, pk, "receiver")
    assert result.message == f"IMAP (STARTTLS) TLSv1.3 as {mailbox_user.login} {DASH} 1 folder"


def test_imap_ssl_with_truststore_and_login_command(
    app, make_account, dovecot, mailbox_user, test_ca_truststore
):
    pk = _receiver(
        make_account,
        dovecot,
        mailbox_user,
        "imap",
        "ssl",
        receiver_truststore_id=test_ca_truststore,
        receiver_advanced={"mail.imaps.auth.plain.disable": "true"},
    )
    result = _test(app, pk, "receiver")
    assert result.message == f"IMAP (SSL/TLS) TLSv1.3 as {mailbox_user.login} {DASH} 1 folder"


def test_imap_self_signed_ca_refused_without_truststore(app, make_account, dovecot, mailbox_user):
    pk = _receiver(make_account, dovecot, mailbox_user, "imap", "ssl")
    result = _test(app, pk, "receiver")
    assert not result.ok
    assert result.message.startswith(
        "The certificate of 127.0.0.1 is not trusted by the system truststore:"
    )


def test_imap_wrong_password(app, make_account, dovecot, mailbox_user):
    pk = _receiver(make_account, dovecot, mailbox_user, "imap", "none", receiver_password="not it")
    result = _test(app, pk, "receiver")
    assert not result.ok
    assert result.message.startswith(f"Authentication failed for {mailbox_user.login}:")


def test_pop3_plain_counts_messages(app, make_account, dovecot, mailbox_user):
    for n in range(2):
        dovecot.deliver(mailbox_user.login, f"Subject: m{n}\r\n\r\nbody\r\n".encode())
    pk = _receiver(make_account, dovecot, mailbox_user, "pop3", "none")
    result = _test(app, pk, "receiver")
    assert result.message == (
        f"POP3 (default) {DASH} insecure connection as {mailbox_user.login} {DASH} 2 messages"
    )


def test_pop3_ssl_with_truststore(app, make_account, dovecot, mailbox_user, test_ca_truststore):
    pk = _receiver(
        make_account,
        dovecot,
        mailbox_user,
        "pop3",
        "ssl",
        receiver_truststore_id=test_ca_truststore,
    )
    result = _test(app, pk, "receiver")
    assert result.message == f"POP3 (SSL/TLS) TLSv1.3 as {mailbox_user.login} {DASH} 0 messages"


def test_pop3_wrong_password(app, make_account, dovecot, mailbox_user):
    pk = _receiver(make_account, dovecot, mailbox_user, "pop3", "none", receiver_password="not it")
    result = _test(app, pk, "receiver")
    assert result.message.startswith(f"Authentication failed for {mailbox_user.login}:")


def test_server_limited_to_tls_12_is_refused_when_the_lowest_is_13(
    app, make_account, dovecot, mailbox_user, test_ca_truststore, tls12_proxy
):
    proxy = tls12_proxy(dovecot.imap_port)
    fields = {
        "receiver_protocol": "imap",
        "receiver_port": proxy.port,
        "receiver_security": "ssl",
        "receiver_user_id": mailbox_user.login,
        "receiver_password": mailbox_user.password,
        "receiver_truststore_id": test_ca_truststore,
    }
    allowed = _test(app, make_account(receiver_tls_min="1.2", **fields), "receiver")
    assert allowed.message == f"IMAP (SSL/TLS) TLSv1.2 as {mailbox_user.login} {DASH} 1 folder"

    refused = _test(app, make_account(receiver_tls_min="1.3", **fields), "receiver")
    assert not refused.ok
    assert refused.message == (
        f"127.0.0.1:{proxy.port} offers only a TLS version below the lowest allowed (TLS 1.3)."
    )
