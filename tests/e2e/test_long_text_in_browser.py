"""A sender's long unbroken subject wraps inside the page instead of widening it."""

from __future__ import annotations

from tests.support.inbound import make_route, message, store
from webapp.extensions import db
from webapp.services.ingest import ingest_message


def test_a_long_unbroken_subject_does_not_widen_the_pages(
    app, live_server, page, sign_in, make_user, make_account, make_case_type, screenshot
):
    admin = make_user("admin", email="ada@example.com")
    listener_id = make_route(app, make_account(), make_case_type())
    inbound_id = store(app, message(subject="S" * 3000), listener_id)
    with app.app_context():
        ingest_message(inbound_id)
        db.session.commit()
    sign_in(admin.email)

    for path in ("/cases/", "/cases/EXP-1001", "/admin/inbox/", f"/admin/inbox/{inbound_id}"):
        page.goto(live_server.url + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        screenshot(path.strip("/").replace("/", "-"))
        assert width <= 1280, f"{path} is {width} px wide"
