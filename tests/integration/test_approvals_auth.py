"""Decisions by email on an account that requires proof of the sender's domain: a DKIM
signature (checked against a key pinned in CASEMAIL_DKIM_KEYS) or the Authentication-Results
header of a trusted receiving server. And the two settings on the account editor."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from tests.fixtures.app import both_databases, csrf_token
from tests.integration.test_accounts import FULL, _full_fields
from tests.support.approvals import MANAGER
from tests.support.dkim import new_dkim_key
from tests.support.replies import Desk, set_up_desk
from webapp.extensions import db
from webapp.mail import authres
from webapp.mail.correlate import new_reply_token
from webapp.models import EmailAccount, InboundMessage
from webapp.services import approvals
from webapp.services.ingest import replay
from workers.inbound import ingest_messages

TRUSTED = "mx.casemail.test"


@pytest.fixture(scope="module")
def dkim_key() -> tuple[bytes, str]:
    """(private key PEM, the public key's TXT record)."""
    pem, record = new_dkim_key()
    return pem, record.decode()


@pytest.fixture
def strict_desk(app, make_account, make_case_type, dkim_key, tmp_path: Path) -> Desk:
    keys = tmp_path / "dkim-keys.txt"
    keys.write_text(f"# the approvers' domain\nsel._domainkey.example.com {dkim_key[1]}\n")
    app.config["CASEMAIL_DKIM_KEYS"] = str(keys)
    return set_up_desk(
        app,
        make_account,
        make_case_type,
        require_authenticated_replies=True,
        trusted_authserv_ids=f"{TRUSTED.upper()}, relay.casemail.test",
    )


def _signed(pem: bytes, raw: bytes) -> bytes:
    headers = [b"from", b"to", b"subject", b"message-id", b"date"]
    return dkim.sign(raw, b"sel", b"example.com", pem, include_headers=headers) + raw


@both_databases
def test_a_signed_reply_is_applied(strict_desk, dkim_key):
    desk = strict_desk
    reference = desk.open_case()

    desk.ingest(_signed(dkim_key[0], desk.reply(desk.request(reference), "APPROVE")))

    assert desk.case(reference).stage == "payment"
    assert desk.events(reference, "refused") == []


@both_databases
def test_an_unsigned_reply_is_refused_and_the_approver_pointed_to_the_links(strict_desk):
    desk = strict_desk
    reference = desk.open_case()

    desk.ingest(desk.reply(desk.request(reference), "APPROVE"))

    assert desk.case(reference).stage == "manager_approval"
    assert desk.approvals(reference)[MANAGER].status == "pending"
    [refused] = desk.events(reference, "refused")
    assert refused.comment.startswith(f"The reply does not prove that it comes from {MANAGER}")
    assert "no Authentication-Results header of a trusted server" in refused.comment
    assert "no DKIM signature" in refused.comment
    [answer] = desk.answers(reference)
    assert "Use the Approve or Reject link in the request instead." in answer.body


@both_databases
def test_a_signature_broken_on_the_way_is_refused(strict_desk, dkim_key):
    desk = strict_desk
    reference = desk.open_case()
    signed = _signed(dkim_key[0], desk.reply(desk.request(reference), "REJECT: too much"))

    desk.ingest(signed.replace(b"REJECT: too much", b"APPROVE, fine!!"))

    assert desk.case(reference).stage == "manager_approval"
    assert "does not verify" in desk.events(reference, "refused")[0].comment


@both_databases
def test_a_trusted_servers_authentication_results_are_enough(strict_desk):
    desk = strict_desk
    reference = desk.open_case()
    reply = desk.reply(desk.request(reference), "APPROVE")
    header = (
        f"Authentication-Results: {TRUSTED}; spf=pass smtp.mailfrom=example.com;\r\n"
        " dkim=pass header.d=example.com; dmarc=pass (p=reject) header.from=example.com\r\n"
    )

    desk.ingest(header.encode() + reply)

    assert desk.case(reference).stage == "payment"


@both_databases
def test_authentication_results_of_an_untrusted_server_are_ignored(strict_desk):
    desk = strict_desk
    reference = desk.open_case()
    reply = desk.reply(desk.request(reference), "APPROVE")
    header = "Authentication-Results: mx.evil.example; dmarc=pass header.from=example.com\r\n"

    desk.ingest(header.encode() + reply)

    assert desk.case(reference).stage == "manager_approval"
    assert "no Authentication-Results header of a trusted server" in (
        desk.events(reference, "refused")[0].comment
    )


def test_a_broken_key_file_refuses_with_the_reason(app, strict_desk, tmp_path):
    desk = strict_desk
    broken = tmp_path / "broken.txt"
    broken.write_text("example.com v=DKIM1\n")
    app.config["CASEMAIL_DKIM_KEYS"] = str(broken)
    reference = desk.open_case()

    desk.ingest(desk.reply(desk.request(reference), "APPROVE"))

    assert desk.case(reference).stage == "manager_approval"
    comment = desk.events(reference, "refused")[0].comment
    assert "the DKIM key file (CASEMAIL_DKIM_KEYS) cannot be used: line 1" in comment


def test_the_account_editor_saves_the_reply_checks_and_refuses_bad_ids(app, client, login_as):
    login_as("admin")
    data = _full_fields(
        require_authenticated_replies="y", trusted_authserv_ids="mx.example.com; rm -rf"
    )
    response = client.post(FULL, data={**data, "csrf_token": csrf_token(client, FULL)})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "is not a host name: list the names of your receiving mail servers" in html

    data = _full_fields(
        require_authenticated_replies="y", trusted_authserv_ids=" MX1.example.com ,mx2.example.com"
    )
    response = client.post(FULL, data={**data, "csrf_token": csrf_token(client, FULL)})
    assert response.status_code == 302, response.get_data(as_text=True)
    with app.app_context():
        account = db.session.scalar(select(EmailAccount))
        assert account is not None
        assert account.require_authenticated_replies is True
        assert account.trusted_authserv_ids == "mx1.example.com, mx2.example.com"
        pk = account.id
    page = client.get(f"/admin/accounts/{pk}").get_data(as_text=True)
    assert "Must pass DKIM or a trusted Authentication-Results header" in page
    editor = client.get(f"/admin/accounts/{pk}/edit").get_data(as_text=True)
    assert "Decisions by email must pass DKIM or a trusted Authentication-Results header" in editor
    assert 'value="mx1.example.com, mx2.example.com"' in editor


def _writers_wait(inbound_id: int) -> bool:
    """Whether another connection that wants to write now has to wait: for SQLite's write
    lock, or on PostgreSQL for the message's row, which a batch's claim locks."""
    if db.engine.dialect.name == "sqlite":
        other = sqlite3.connect(db.engine.url.database or "", timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.rollback()
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            other.close()
    with db.engine.connect() as other:
        try:
            other.execute(
                text("SELECT id FROM inbound_messages WHERE id = :id FOR UPDATE NOWAIT"),
                {"id": inbound_id},
            )
            return False
        except OperationalError:
            return True
        finally:
            other.rollback()


def _watch_key_lookups(monkeypatch, watch: Callable[[bytes], None]) -> None:
    """Call `watch` with the name each time a signer's key is looked up."""
    pinned = approvals._dnsfunc

    def watched() -> authres.DnsFunc | None:
        lookup = pinned()
        assert lookup is not None

        def looked_up(name: bytes, timeout: int = 5) -> bytes | None:
            watch(name)
            return lookup(name, timeout=timeout)

        return looked_up

    monkeypatch.setattr(approvals, "_dnsfunc", watched)


@both_databases
@pytest.mark.parametrize("path", ["worker", "replay"])
def test_the_signature_is_checked_before_any_lock_is_taken(
    app, strict_desk, dkim_key, monkeypatch, path
):
    """Looking a signer's key up in DNS can take seconds: meanwhile other workers and the web
    pages must still be able to write. The same when an admin replays the message."""
    desk = strict_desk
    reference = desk.open_case()
    inbound_id = desk.store(_signed(dkim_key[0], desk.reply(desk.request(reference), "APPROVE")))
    seen: list[bool] = []
    _watch_key_lookups(monkeypatch, lambda name: seen.append(_writers_wait(inbound_id)))
    with app.app_context():
        if path == "worker":
            ingest_messages([inbound_id])
        else:
            db.session.get(InboundMessage, inbound_id).status = "quarantined"
            db.session.commit()
            replay(inbound_id)
            db.session.commit()

    assert seen == [False]
    assert desk.case(reference).stage == "payment"
    assert desk.events(reference, "refused") == []


@both_databases
def test_a_worker_refuses_an_unsigned_reply_with_the_reason(app, strict_desk):
    desk = strict_desk
    reference = desk.open_case()
    inbound_id = desk.store(desk.reply(desk.request(reference), "APPROVE"))

    with app.app_context():
        ingest_messages([inbound_id])

    assert desk.case(reference).stage == "manager_approval"
    [refused] = desk.events(reference, "refused")
    assert refused.comment.startswith(f"The reply does not prove that it comes from {MANAGER}")
    assert "no DKIM signature" in refused.comment


@both_databases
def test_a_reply_whose_check_breaks_holds_up_no_other_in_its_batch(
    app, strict_desk, dkim_key, monkeypatch
):
    desk = strict_desk
    first, second = desk.open_case(), desk.open_case(subject="Hotel")
    good = desk.store(_signed(dkim_key[0], desk.reply(desk.request(first), "APPROVE")))
    broken = desk.store(desk.reply(desk.request(second), "APPROVE"))
    checked = approvals.sender_proof

    def breaks_on_the_second(raw, message, account):
        if second.encode() in raw:
            raise RuntimeError("resolver on fire")
        return checked(raw, message, account)

    monkeypatch.setattr(approvals, "sender_proof", breaks_on_the_second)
    with app.app_context():
        ingest_messages([good, broken])
        statuses = [db.session.get(InboundMessage, i).status for i in (good, broken)]

    assert desk.case(first).stage == "payment"
    # Checked again while it was ingested: refused for what it is, not left waiting.
    assert statuses == ["processed", "processed"]
    assert "no DKIM signature" in desk.events(second, "refused")[0].comment


@both_databases
def test_a_made_up_reply_token_costs_no_key_lookup(app, strict_desk, dkim_key, monkeypatch):
    desk = strict_desk
    reference = desk.open_case()
    request = desk.request(reference)
    forged = _signed(
        dkim_key[0],
        desk.reply(request, "APPROVE").replace(request.token.encode(), new_reply_token().encode()),
    )
    inbound_id = desk.store(forged)
    lookups: list[bytes] = []
    _watch_key_lookups(monkeypatch, lookups.append)
    with app.app_context():
        ingest_messages([inbound_id])

    assert lookups == []
    assert desk.case(reference).stage == "manager_approval"
