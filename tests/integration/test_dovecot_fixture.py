"""The Dovecot fixture serves real IMAP and POP3, in plain text and over TLS, on loopback."""

from __future__ import annotations

import poplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from tests.fixtures.dovecot import DovecotServer, MailboxUser

TIMEOUT = 10

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Support <support@example.org>\r\n"
    b"Subject: =?utf-8?q?Dossier_n=C2=B042?=\r\n"
    b"Message-ID: <fixture-test@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Bonjour, voici ma r\xc3\xa9clamation.\r\n"
    b".a line that POP3 must dot-stuff\r\n"
)


@contextmanager
def pop3(dovecot: DovecotServer, *, implicit_tls: bool) -> Iterator[poplib.POP3]:
    client = (
        poplib.POP3_SSL(
            dovecot.host,
            dovecot.pop3s_port,
            timeout=TIMEOUT,
            context=dovecot.pki.ssl_client_context(),
        )
        if implicit_tls
        else poplib.POP3(dovecot.host, dovecot.pop3_port, timeout=TIMEOUT)
    )
    try:
        yield client
    finally:
        client.close()


def test_plain_imap_login_offers_starttls(
    dovecot: DovecotServer, mailbox_user: MailboxUser
) -> None:
    with IMAPClient(dovecot.host, dovecot.imap_port, ssl=False, timeout=TIMEOUT) as client:
        assert b"STARTTLS" in client.capabilities()
        client.login(mailbox_user.login, mailbox_user.password)
        assert client.select_folder("INBOX")[b"EXISTS"] == 0


def test_imap_starttls_login(dovecot: DovecotServer, mailbox_user: MailboxUser) -> None:
    with IMAPClient(dovecot.host, dovecot.imap_port, ssl=False, timeout=TIMEOUT) as client:
        client.starttls(dovecot.pki.ssl_client_context())
        client.login(mailbox_user.login, mailbox_user.password)
        assert client.select_folder("INBOX")[b"EXISTS"] == 0


def test_imaps_login(dovecot: DovecotServer, mailbox_user: MailboxUser) -> None:
    with IMAPClient(
        dovecot.host,
        dovecot.imaps_port,
        ssl_context=dovecot.pki.ssl_client_context(),
        timeout=TIMEOUT,
    ) as client:
        client.login(mailbox_user.login, mailbox_user.password)
        assert client.select_folder("INBOX")[b"EXISTS"] == 0


def test_delivered_message_is_fetched_byte_identical(
    dovecot: DovecotServer, mailbox_user: MailboxUser
) -> None:
    dovecot.deliver(mailbox_user.login, MESSAGE)

    with IMAPClient(dovecot.host, dovecot.imap_port, ssl=False, timeout=TIMEOUT) as client:
        client.login(mailbox_user.login, mailbox_user.password)
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        fetched = client.fetch(uids, ["BODY.PEEK[]", "FLAGS"])

    assert len(uids) == 1
    assert fetched[uids[0]][b"BODY[]"] == MESSAGE
    assert b"\\Seen" not in fetched[uids[0]][b"FLAGS"]


def test_message_delivered_during_a_session_shows_up_at_the_next_command(
    dovecot: DovecotServer, mailbox_user: MailboxUser
) -> None:
    with IMAPClient(dovecot.host, dovecot.imap_port, ssl=False, timeout=TIMEOUT) as client:
        client.login(mailbox_user.login, mailbox_user.password)
        client.select_folder("INBOX")
        dovecot.deliver(mailbox_user.login, MESSAGE)
        client.noop()
        assert len(client.search("ALL")) == 1


def test_message_delivered_to_another_folder_is_listed(
    dovecot: DovecotServer, mailbox_user: MailboxUser
) -> None:
    folder = "Archive/Réclamations"
    dovecot.deliver(mailbox_user.login, MESSAGE, folder=folder)
    dovecot.create_folder(mailbox_user.login, "Empty")

    with IMAPClient(dovecot.host, dovecot.imap_port, ssl=False, timeout=TIMEOUT) as client:
        client.login(mailbox_user.login, mailbox_user.password)
        names = {name for _flags, _delimiter, name in client.list_folders()}
        assert {"INBOX", folder, "Empty"} <= names
        assert client.select_folder(folder, readonly=True)[b"EXISTS"] == 1
        assert client.select_folder("INBOX", readonly=True)[b"EXISTS"] == 0


def test_reset_user_empties_every_folder(dovecot: DovecotServer, mailbox_user: MailboxUser) -> None:
    dovecot.deliver(mailbox_user.login, MESSAGE)
    dovecot.deliver(mailbox_user.login, MESSAGE, folder="Archive")

    dovecot.reset_user(mailbox_user.login)

    with IMAPClient(dovecot.host, dovecot.imap_port, ssl=False, timeout=TIMEOUT) as client:
        client.login(mailbox_user.login, mailbox_user.password)
        assert [name for _flags, _delimiter, name in client.list_folders()] == ["INBOX"]
        assert client.select_folder("INBOX")[b"EXISTS"] == 0


@pytest.mark.parametrize("implicit_tls", [False, True], ids=["pop3", "pop3s"])
def test_pop3_login_and_retrieve(
    dovecot: DovecotServer, mailbox_user: MailboxUser, implicit_tls: bool
) -> None:
    dovecot.deliver(mailbox_user.login, MESSAGE)

    with pop3(dovecot, implicit_tls=implicit_tls) as client:
        if not implicit_tls:
            assert "STLS" in client.capa()
        client.user(mailbox_user.login)
        client.pass_(mailbox_user.password)
        assert client.stat() == (1, len(MESSAGE))
        _response, lines, _octets = client.retr(1)
        client.quit()

    assert b"\r\n".join([*lines, b""]) == MESSAGE


def test_wrong_password_is_refused(dovecot: DovecotServer, mailbox_user: MailboxUser) -> None:
    with (
        IMAPClient(dovecot.host, dovecot.imap_port, ssl=False, timeout=TIMEOUT) as client,
        pytest.raises(LoginError),
    ):
        client.login(mailbox_user.login, mailbox_user.password + "-wrong")

    with pop3(dovecot, implicit_tls=False) as client:
        client.user(mailbox_user.login)
        with pytest.raises(poplib.error_proto, match="Authentication failed"):
            client.pass_(mailbox_user.password + "-wrong")


def test_implicit_tls_without_the_test_ca_fails_verification(dovecot: DovecotServer) -> None:
    untrusting = ssl.create_default_context()

    with pytest.raises(ssl.SSLCertVerificationError):
        IMAPClient(dovecot.host, dovecot.imaps_port, ssl_context=untrusting, timeout=TIMEOUT)
