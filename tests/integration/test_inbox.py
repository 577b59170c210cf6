"""Incoming mail pages: the list with quarantine first, a message, its .eml, replay, roles."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.app import csrf_token
from tests.support.inbound import load, make_route, message, store
from webapp.extensions import db
from webapp.models import InboundMessage
from webapp.services.ingest import ingest_message

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "inbound"

HTML = (
    b"From: Bob <bob@example.com>\r\nTo: expenses@casemail.test\r\nSubject: Lunch\r\n"
    b"Message-ID: <html@example.com>\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    b"<p>Amount: 12</p><script>alert(1)</script><img src=x onerror=alert(2)>\r\n"
)


@pytest.fixture
def messages(app, make_account, make_case_type):
    """A processed message, a quarantined one (no rule) and an HTML one; their ids."""
    listener_id = make_route(app, make_account(), make_case_type())
    processed = store(app, message(), listener_id)
    quarantined = store(app, message(message_id="<lost@example.com>", subject="Lost"), None)
    html = store(app, HTML, listener_id)
    with app.app_context():
        for inbound_id in (processed, quarantined, html):
            ingest_message(inbound_id)
            db.session.commit()
    return {
        "processed": processed,
        "quarantined": quarantined,
        "html": html,
        "listener": listener_id,
    }


def test_the_list_shows_quarantine_first_and_filters_by_status(client, login_as, messages):
    login_as("admin")
    page = client.get("/admin/inbox/").get_data(as_text=True)
    assert page.index("Lost") < page.index("Taxi to the airport")
    assert "EXP-1001" in page
    assert "This message has no listener (it came in without one" in page
    only = client.get("/admin/inbox/?status=processed").get_data(as_text=True)
    assert "Lost" not in only and "Taxi to the airport" in only


def test_a_message_shows_reasons_and_sanitised_html(client, login_as, messages):
    login_as("admin")
    page = client.get(f"/admin/inbox/{messages['processed']}").get_data(as_text=True)
    assert "Opened EXP-1001." in page and "no match" in page
    assert "Download .eml" in page and "Replay" not in page
    page = client.get(f"/admin/inbox/{messages['html']}").get_data(as_text=True)
    assert "<p>Amount: 12</p>" in page
    assert "<script>alert(1)" not in page and "onerror" not in page


def test_the_eml_downloads_as_an_attachment(client, login_as, messages, app):
    login_as("admin")
    response = client.get(f"/admin/inbox/{messages['html']}/message.eml")
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="message-{messages["html"]}.eml"'
    )
    assert response.data == HTML


def test_replay_from_the_page_ingests_again(app, client, login_as, messages):
    login_as("admin")
    inbound_id = messages["quarantined"]
    path = f"/admin/inbox/{inbound_id}"
    page = client.get(path).get_data(as_text=True)
    assert "Replay" in page
    # Still no rule: replaying quarantines it again and says so.
    response = client.post(f"{path}/replay", data={"csrf_token": csrf_token(client, path)})
    assert response.status_code == 302
    assert "Replayed: quarantined." in client.get(path).get_data(as_text=True)
    with app.app_context():
        db.session.get(InboundMessage, inbound_id).listener_id = messages["listener"]
        db.session.commit()
    client.post(f"{path}/replay", data={"csrf_token": csrf_token(client, path)})
    inbound = load(app, inbound_id)
    assert inbound.status == "processed"
    assert inbound.attempts == 3
    assert "Replayed: processed. Opened EXP-1003." in client.get(path).get_data(as_text=True)
    # A processed message is not replayed.
    client.post(f"{path}/replay", data={"csrf_token": csrf_token(client, path)})
    page = client.get(path).get_data(as_text=True)
    assert "only quarantined messages are replayed" in page


@pytest.mark.parametrize("role", ["worker", "designer"])
def test_incoming_mail_is_for_admins_only(client, login_as, messages, role):
    login_as(role)
    inbound_id = messages["quarantined"]
    for path in (
        "/admin/inbox/",
        f"/admin/inbox/{inbound_id}",
        f"/admin/inbox/{inbound_id}/message.eml",
    ):
        assert client.get(path).status_code == 403
    assert client.post(f"/admin/inbox/{inbound_id}/replay").status_code in (400, 403)


def _golden(app, name: str, listener_id: int) -> int:
    """Store the golden message `name` for the listener; its id."""
    return store(app, (GOLDEN / name).read_bytes(), listener_id)


def test_inline_images_show_inside_the_sanitised_html(app, client, login_as, messages):
    inbound_id = _golden(app, "inline_image_related.eml", messages["listener"])
    login_as("admin")
    page = client.get(f"/admin/inbox/{inbound_id}").get_data(as_text=True)
    source = f"/admin/inbox/{inbound_id}/parts/"
    assert f'<img src="{source}' in page and "alert(1)" not in page
    index = page.split(f'<img src="{source}', 1)[1].split('"', 1)[0]
    image = client.get(f"{source}{index}")
    assert image.status_code == 200 and image.mimetype == "image/png"


def test_an_attachment_downloads_under_its_own_name(app, client, login_as, messages):
    inbound_id = _golden(app, "attachment_pdf_rfc2231.eml", messages["listener"])
    login_as("admin")
    page = client.get(f"/admin/inbox/{inbound_id}").get_data(as_text=True)
    assert "Rechnung März 2026.pdf" in page
    download = client.get(f"/admin/inbox/{inbound_id}/parts/0")
    assert download.status_code == 200 and download.data.startswith(b"%PDF")
    assert download.headers["Content-Disposition"] == (
        'attachment; filename="Rechnung M?rz 2026.pdf"; '
        "filename*=UTF-8''Rechnung%20M%C3%A4rz%202026.pdf"
    )
    assert download.headers["X-Content-Type-Options"] == "nosniff"
