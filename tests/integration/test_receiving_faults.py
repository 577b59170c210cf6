"""Odd answers a mail server can give, on the real Dovecot and the local Graph server: the
answer is altered on its way into the client, and what the poll does is what a user sees.
Nothing is flagged, moved or deleted unless it is stored; a message the server will not give
holds back no other; a poll that fails says why on the listener's health."""

from __future__ import annotations

import imaplib
from typing import Any

from sqlalchemy import select

from tests.fixtures.app import both_databases
from tests.fixtures.graph import GRAPH_UPN as UPN
from tests.fixtures.listeners import make_raw
from tests.integration.test_receiving import flags_by_subject, pop3_count, run, stored
from webapp.extensions import db
from webapp.mail import graph
from webapp.mail.pop3 import _POP3
from webapp.models import EmailListener
from webapp.services import receiving


def _health(app, listener_id: int) -> tuple[bool | None, str]:
    with app.app_context():
        listener = db.session.get(EmailListener, listener_id)
        return listener.last_poll_ok, listener.last_error


def _subjects(app) -> list[str]:
    return sorted(r.subject for r in stored(app))


def _refusing(refused: int) -> Any:
    """IMAPClient.fetch, but the server answers NO to any FETCH that asks for `refused`."""
    fetch = receiving._ImapClient.fetch

    def refuse(self: Any, uids: Any, *args: Any) -> Any:
        if refused in uids:
            raise imaplib.IMAP4.error("FETCH failed: [SERVERBUG] Internal error")
        return fetch(self, uids, *args)

    return refuse


def test_imap_after_processing_touches_only_what_was_stored(
    app, dovecot, mailbox_user, mailbox_account, make_listener, imap, monkeypatch
):
    """The FETCH answer leaves one message out, and SEARCH names a UID that does not exist:
    the message left out is neither deleted nor skipped, and the next poll stores it."""
    for n in range(1, 4):
        dovecot.deliver(mailbox_user.login, make_raw(f"Order {n}"))
    listener_id = make_listener(mailbox_account(), after_processing="delete")
    fetch, search = receiving._ImapClient.fetch, receiving._ImapClient.search

    def fetch_without_uid_2(self: Any, uids: Any, *args: Any) -> Any:
        return {uid: data for uid, data in fetch(self, uids, *args).items() if uid != 2}

    def search_with_a_ghost(self: Any, criteria: Any) -> Any:
        return [*search(self, criteria), 4_000_000_000]

    monkeypatch.setattr(receiving._ImapClient, "fetch", fetch_without_uid_2)
    monkeypatch.setattr(receiving._ImapClient, "search", search_with_a_ghost)
    first = run(app, listener_id)
    assert first.summary() == "fetched 2, stored 2, duplicates 0"
    (left_out,) = flags_by_subject(imap)  # left on the server, not deleted
    assert _subjects(app) == sorted({"Order 1", "Order 2", "Order 3"} - {left_out})
    with app.app_context():
        # Below the message left out, whose flags may change before the next poll.
        assert db.session.get(EmailListener, listener_id).last_uid == 1

    monkeypatch.undo()
    dovecot.deliver(mailbox_user.login, make_raw("Order 4"))
    second = run(app, listener_id)
    assert second.ok, second.errors
    assert second.summary() == "fetched 2, stored 2, duplicates 0"
    assert _subjects(app) == ["Order 1", "Order 2", "Order 3", "Order 4"]
    assert flags_by_subject(imap) == {}


def test_imap_a_message_the_server_will_not_give_holds_back_no_other(
    app, dovecot, mailbox_user, mailbox_account, make_listener, imap, monkeypatch
):
    for n in range(1, 4):
        dovecot.deliver(mailbox_user.login, make_raw(f"Order {n}"))
    listener_id = make_listener(mailbox_account())
    monkeypatch.setattr(receiving._ImapClient, "fetch", _refusing(2))
    result = run(app, listener_id)
    assert result.stored == 2
    unread = [
        subject for subject, flags in flags_by_subject(imap).items() if b"\\Seen" not in flags
    ]
    assert len(unread) == 1
    assert _subjects(app) == sorted({"Order 1", "Order 2", "Order 3"} - set(unread))
    ok, error = _health(app, listener_id)
    assert ok is False
    assert "The server did not give message UID 2: FETCH failed: [SERVERBUG]" in error

    monkeypatch.undo()
    assert run(app, listener_id).stored == 1
    assert _subjects(app) == ["Order 1", "Order 2", "Order 3"]
    assert _health(app, listener_id) == (True, "")


@both_databases
def test_pop3_takes_long_lines_and_skips_unique_ids_that_are_not_ones(
    app, dovecot, mailbox_user, mailbox_account, make_listener, monkeypatch
):
    """A message with a 5,000-byte line (HTML without line breaks) is stored; UIDL lines
    without a usable unique-id, and both messages of a unique-id listed twice, stay on the
    server, named in the health (deleting one by the other's id would lose it)."""
    long_line = make_raw("Wide newsletter").replace(b"\r\n\r\n", b"\r\n\r\n" + b"x" * 5000, 1)
    dovecot.deliver(mailbox_user.login, long_line)
    dovecot.deliver(mailbox_user.login, make_raw("Order 2"))
    listener_id = make_listener(mailbox_account("pop3"), after_processing="delete")
    uidl = _POP3.uidl

    def odd_listing(self: Any, which: Any = None) -> Any:
        answer, lines, octets = uidl(self, which)
        long_one = next(line for line in lines if line.startswith(b"1 "))
        twice = b"2 " + long_one.split(b" ", 1)[1]  # message 2 under message 1's unique-id
        return answer, [long_one, twice, b"3", b"4 " + b"u" * 71], octets

    monkeypatch.setattr(_POP3, "uidl", odd_listing)
    result = run(app, listener_id)
    assert result.stored == 0
    ok, error = _health(app, listener_id)
    assert ok is False
    assert error.count("without a unique id of its own") == 4
    assert pop3_count(dovecot, mailbox_user) == 2  # nothing deleted

    monkeypatch.undo()
    assert run(app, listener_id).stored == 2
    assert _subjects(app) == ["Order 2", "Wide newsletter"]
    assert b"x" * 5000 in next(r.raw for r in stored(app) if r.subject == "Wide newsletter")
    assert pop3_count(dovecot, mailbox_user) == 0


def test_graph_a_next_link_that_leads_back_stops_the_poll_with_a_sentence(
    app,
    graph_server,
    graph_account,
    make_listener,
    monkeypatch,
):
    graph_server.deliver(UPN, make_raw("Order 1"))
    listener_id = make_listener(graph_account)
    page = graph.delta_page
    loop = "the link Graph keeps answering"

    def looping(*args: Any) -> graph.DeltaPage:
        url, upn, token, settings, policy, folder_id, _link, size = args
        got = page(url, upn, token, settings, policy, folder_id, None, size)  # the first page
        return graph.DeltaPage(got.messages, loop, None)

    monkeypatch.setattr(graph, "delta_page", looping)
    result = run(app, listener_id)
    assert [r.subject for r in stored(app)] == ["Order 1"]  # what was read is kept
    assert result.errors == [
        "Microsoft Graph led back to a page of this folder's delta already read; the poll "
        "stopped. What was stored is kept; the next poll starts over from the last complete "
        "delta."
    ]
    with app.app_context():
        assert db.session.get(EmailListener, listener_id).graph_delta_link is None


def test_a_poll_that_fails_unexpectedly_says_so_on_the_health_page(
    app, client, login_as, dovecot, mailbox_user, mailbox_account, make_listener, monkeypatch
):
    dovecot.deliver(mailbox_user.login, make_raw("Order 1"))
    listener_id = make_listener(mailbox_account())

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError(b"BODY[]")

    monkeypatch.setattr(receiving, "_store_batch", broken)
    result = run(app, listener_id)
    assert result.errors == [
        "The poll stopped on an unexpected answer or error (KeyError: b'BODY[]'); the "
        "worker's log has the details."
    ]
    with app.app_context():
        listener = db.session.scalar(select(EmailListener))
        assert listener.last_poll_at is not None and listener.last_poll_ok is False
    login_as("admin")
    page = client.get("/admin/listeners").get_data(as_text=True)
    assert "The poll stopped on an unexpected answer or error" in page


def test_imap_a_message_not_given_is_fetched_later_even_once_it_has_been_read(
    app, dovecot, mailbox_user, mailbox_account, make_listener, imap, monkeypatch
):
    """Mark-as-read listener, batches of one: the server refuses one message, its owner
    reads it before the next poll; it is stored all the same, and the others were not held
    back meanwhile."""
    for n in range(1, 4):
        dovecot.deliver(mailbox_user.login, make_raw(f"Order {n}"))
    listener_id = make_listener(mailbox_account(), max_batch=1)
    monkeypatch.setattr(receiving._ImapClient, "fetch", _refusing(2))
    assert run(app, listener_id).stored == 2
    imap.select_folder("INBOX")
    imap.add_flags([2], [b"\\Seen"])  # the owner reads it
    monkeypatch.undo()
    result = run(app, listener_id)
    assert result.ok, result.errors
    assert result.stored == 1
    assert _subjects(app) == ["Order 1", "Order 2", "Order 3"]


def test_imap_a_lost_connection_is_one_sentence(
    app, dovecot, mailbox_user, mailbox_account, make_listener, monkeypatch
):
    for n in range(1, 4):
        dovecot.deliver(mailbox_user.login, make_raw(f"Order {n}"))
    listener_id = make_listener(mailbox_account())

    def gone(self: Any, uids: Any, *args: Any) -> Any:
        raise imaplib.IMAP4.abort("socket error: EOF")

    monkeypatch.setattr(receiving._ImapClient, "fetch", gone)
    result = run(app, listener_id)
    assert len(result.errors) == 1
    assert "socket error: EOF" in result.errors[0]


def test_imap_a_last_uid_past_the_folder_is_brought_back(
    app, dovecot, mailbox_user, mailbox_account, make_listener, imap
):
    """A last UID beyond UIDNEXT (left by a server's answer naming a UID no message has) is
    brought back to what is stored: mail read before the poll is still stored."""
    dovecot.deliver(mailbox_user.login, make_raw("Order 1"))
    listener_id = make_listener(mailbox_account())
    assert run(app, listener_id).stored == 1
    dovecot.deliver(mailbox_user.login, make_raw("Order 2"))
    imap.select_folder("INBOX")
    imap.add_flags(imap.search(["ALL"]), [b"\\Seen"])  # read by its owner before the poll
    with app.app_context():
        db.session.get(EmailListener, listener_id).last_uid = 4_000_000_000
        db.session.commit()
    result = run(app, listener_id)
    assert result.ok, result.errors
    assert _subjects(app) == ["Order 1", "Order 2"]
    with app.app_context():
        assert db.session.get(EmailListener, listener_id).last_uid == 2


@both_databases
def test_pop3_an_oversize_message_with_one_long_line_is_kept_in_quarantine(
    app, dovecot, mailbox_user, mailbox_account, make_listener
):
    wide = make_raw("Wide").replace(b"\r\n\r\n", b"\r\n\r\n" + b"x" * 6000, 1)
    dovecot.deliver(mailbox_user.login, wide)
    dovecot.deliver(mailbox_user.login, make_raw("Order 2"))
    listener_id = make_listener(mailbox_account("pop3"), max_message_bytes=4096)
    result = run(app, listener_id)
    assert result.ok, result.errors
    assert (result.stored, result.quarantined) == (1, 1)
    rows = {r.subject: r for r in stored(app)}
    assert rows["Wide"].status == "quarantined"
    assert b"x" * 6000 in rows["Wide"].raw
