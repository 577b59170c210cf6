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
from tests.integration.test_receiving import flags_by_subject, run, stored
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
        assert db.session.get(EmailListener, listener_id).last_uid == 3

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
    fetch = receiving._ImapClient.fetch

    def refuse_uid_2(self: Any, uids: Any, *args: Any) -> Any:
        if 2 in uids:
            raise imaplib.IMAP4.error("FETCH failed: [SERVERBUG] Internal error")
        return fetch(self, uids, *args)

    monkeypatch.setattr(receiving._ImapClient, "fetch", refuse_uid_2)
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
    without a usable unique-id leave their message on the server, named in the health."""
    long_line = make_raw("Wide newsletter").replace(b"\r\n\r\n", b"\r\n\r\n" + b"x" * 5000, 1)
    dovecot.deliver(mailbox_user.login, long_line)
    dovecot.deliver(mailbox_user.login, make_raw("Order 2"))
    listener_id = make_listener(mailbox_account("pop3"))
    uidl = _POP3.uidl

    def odd_listing(self: Any, which: Any = None) -> Any:
        answer, lines, octets = uidl(self, which)
        return answer, [*lines, b"3", b"4 " + b"u" * 71, lines[0]], octets

    monkeypatch.setattr(_POP3, "uidl", odd_listing)
    result = run(app, listener_id)
    assert result.stored == 2
    assert _subjects(app) == ["Order 2", "Wide newsletter"]
    assert b"x" * 5000 in next(r.raw for r in stored(app) if r.subject == "Wide newsletter")
    ok, error = _health(app, listener_id)
    assert ok is False
    assert error.count("without a unique id of its own") == 3


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
