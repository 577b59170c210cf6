"""Cases in the browser and through the services: opening, actions, events, notifications."""

from __future__ import annotations

import io

import pytest
from sqlalchemy import select

from tests.fixtures.app import both_databases, csrf_token
from tests.fixtures.cases import EXPENSE_FIELDS, load_case
from webapp.extensions import db
from webapp.models import Case, CaseEvent, OutboundMessage


def _act(client, reference, action, comment="", version=None):
    token = csrf_token(client, f"/cases/{reference}")
    if version is None:
        version = load_case(client.application, reference).row_version
    return client.post(
        f"/cases/{reference}/actions/{action}",
        data={"csrf_token": token, "comment": comment, "row_version": version},
        follow_redirects=True,
    )


@both_databases
def test_worker_opens_a_case_and_it_moves_through_approval(
    app, client, login_as, make_user, make_case_type, auth
):
    type_id = make_case_type()
    manager = make_user("worker", email="manager@example.com")
    worker = login_as("worker")

    page = client.get(f"/cases/new/{type_id}")
    assert "Manager&#39;s email" in page.get_data(as_text=True)
    token = csrf_token(client, f"/cases/new/{type_id}")
    response = client.post(
        f"/cases/new/{type_id}",
        data={"csrf_token": token, "subject": "Train tickets", **EXPENSE_FIELDS},
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/cases/EXP-1001"
    html = client.get("/cases/EXP-1001").get_data(as_text=True)
    assert "Submission" in html and "Submit" in html and "Withdraw" in html

    html = _act(client, "EXP-1001", "submit").get_data(as_text=True)
    assert "Submit: EXP-1001 is now in Manager approval." in html
    assert "Waiting for manager@example.com" in html

    # The worker is not the approver: no buttons, and a forged post is refused.
    html = _act(client, "EXP-1001", "approve").get_data(as_text=True)
    assert "Only the approvers of Manager approval can approve or reject." in html

    auth.logout()
    auth.login(manager.email)
    html = _act(client, "EXP-1001", "reject").get_data(as_text=True)
    assert "Give a reason for the rejection." in html
    html = _act(client, "EXP-1001", "approve", comment="Fine").get_data(as_text=True)
    assert "Approve: EXP-1001 is now in Payment." in html

    case = load_case(app, "EXP-1001")
    assert case.stage == "payment" and case.status == "open" and case.queue == "worker"
    assert [(e.kind, e.from_stage, e.to_stage, e.actor) for e in case.events] == [
        ("created", "", "submission", worker.email),
        ("action", "submission", "manager_approval", worker.email),
        ("action", "manager_approval", "payment", "manager@example.com"),
    ]
    assert case.events[2].comment == "Fine" and case.events[2].channel == "web"


@both_databases
def test_entering_a_stage_stores_its_notifications(app, make_case_type, make_case, make_user):
    from webapp.services.cases import apply_action

    type_id = make_case_type()
    worker = make_user("worker")
    reference = make_case(type_id, by=worker)
    with app.app_context():
        case = db.session.scalar(select(Case).where(Case.reference == reference))
        apply_action(case, "submit", user=db.session.merge(worker))
        db.session.commit()
        messages = list(db.session.scalars(select(OutboundMessage)))
    assert len(messages) == 1
    message = messages[0]
    assert message.status == "pending"
    assert message.recipients == ["manager@example.com"]
    assert message.subject == f"Approve [{reference}]: 120.50 for Travel"
    assert "requester@example.com asks you to approve 120.50 (Travel, 2026-03-02)" in message.body


def test_required_fields_are_checked_beside_the_fields(client, login_as, make_case_type):
    type_id = make_case_type()
    login_as("worker")
    token = csrf_token(client, f"/cases/new/{type_id}")
    response = client.post(
        f"/cases/new/{type_id}",
        data={
            "csrf_token": token,
            "subject": "x",
            "amount": "12,50",
            "expense_date": "soon",
            "category": "Travel",
            "manager_email": "not an address",
        },
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "Enter an amount such as 120 or 120.50 (no currency sign)." in html
    assert "Enter a date as YYYY-MM-DD." in html
    assert "Enter an email address such as name@example.com." in html
    assert client.get("/cases/EXP-1001").status_code == 404


def test_a_stale_page_is_refused_as_already_processed(
    app, client, login_as, make_case_type, make_case
):
    type_id = make_case_type()
    login_as("worker")
    reference = make_case(type_id)
    old_version = load_case(app, reference).row_version
    _act(client, reference, "submit")
    html = _act(client, reference, "withdraw", version=old_version).get_data(as_text=True)
    assert f"{reference} was already processed by someone else; reload to see it." in html
    assert load_case(app, reference).stage == "manager_approval"


def test_actions_not_in_the_design_are_refused(app, client, login_as, make_case_type, make_case):
    type_id = make_case_type()
    login_as("admin")
    reference = make_case(type_id)
    html = _act(client, reference, "mark_paid").get_data(as_text=True)
    assert "Mark paid is not possible in the stage Submission; possible: Submit, Withdraw." in html
    html = _act(client, reference, "withdraw").get_data(as_text=True)
    assert "is now in Resolved-Withdrawn" in html
    html = _act(client, reference, "submit").get_data(as_text=True)
    assert "The case is resolved (Resolved-Withdrawn); no more actions are possible." in html
    assert load_case(app, reference).status == "resolved"


def test_fields_are_editable_only_where_the_stage_allows(
    app, client, login_as, make_case_type, make_case
):
    type_id = make_case_type()
    login_as("worker")
    reference = make_case(type_id)
    token = csrf_token(client, f"/cases/{reference}")
    version = load_case(app, reference).row_version
    data = {**EXPENSE_FIELDS, "amount": "99", "csrf_token": token, "row_version": version}
    response = client.post(f"/cases/{reference}/fields", data=data, follow_redirects=True)
    assert "Saved: Amount." in response.get_data(as_text=True)
    bad = {**data, "amount": "lots", "row_version": version + 1}
    response = client.post(f"/cases/{reference}/fields", data=bad)
    assert response.status_code == 400
    assert "Enter an amount such as 120" in response.get_data(as_text=True)
    _act(client, reference, "submit")
    html = client.get(f"/cases/{reference}").get_data(as_text=True)
    assert "Fields cannot be edited in this stage." in html
    assert load_case(app, reference).fields["amount"] == "99"


def test_attachments_download_as_attachments(app, client, login_as, make_case_type, make_case):
    type_id = make_case_type()
    login_as("worker")
    reference = make_case(type_id)
    token = csrf_token(client, f"/cases/{reference}")
    response = client.post(
        f"/cases/{reference}/attachments",
        data={
            "csrf_token": token,
            "file": (io.BytesIO(b"<script>alert(1)</script>"), "receipt.html"),
        },
        content_type="multipart/form-data",
        follow_redirects=True,
    )
    assert "Attached receipt.html." in response.get_data(as_text=True)
    case = load_case(app, reference)
    with app.app_context():
        attachment_id = db.session.scalar(select(Case).where(Case.id == case.id)).attachments[0].id
    download = client.get(f"/cases/{reference}/attachments/{attachment_id}")
    assert download.status_code == 200
    assert download.headers["Content-Disposition"].startswith('attachment; filename="receipt.html"')
    assert download.headers["X-Content-Type-Options"] == "nosniff"
    assert download.mimetype == "application/octet-stream"
    assert download.data == b"<script>alert(1)</script>"


def test_case_page_shows_the_diagram_with_the_current_stage(
    client, login_as, make_case_type, make_case
):
    type_id = make_case_type()
    login_as("worker")
    reference = make_case(type_id)
    svg = client.get(f"/cases/{reference}/diagram.svg")
    assert svg.mimetype == "image/svg+xml"
    text = svg.get_data(as_text=True)
    assert "Manager approval" in text and "Resolved&#45;Completed" in text
    # The current stage is drawn with the highlight colour, the others are not.
    assert text.count("#d6e9ff") == 1


def test_comments_go_on_the_timeline(client, login_as, make_case_type, make_case):
    type_id = make_case_type()
    user = login_as("worker")
    reference = make_case(type_id)
    token = csrf_token(client, f"/cases/{reference}")
    response = client.post(
        f"/cases/{reference}/comments",
        data={"csrf_token": token, "comment": "Called the requester"},
        follow_redirects=True,
    )
    html = response.get_data(as_text=True)
    assert "Called the requester" in html and user.email in html


def test_events_record_the_channel(app, make_case_type, make_case, make_user):
    from webapp.services.cases import apply_action

    type_id = make_case_type()
    reference = make_case(type_id)
    with app.app_context():
        case = db.session.scalar(select(Case).where(Case.reference == reference))
        apply_action(case, "withdraw", user=None, channel="system", comment="Duplicate")
        db.session.commit()
        event = db.session.scalars(select(CaseEvent).order_by(CaseEvent.id.desc())).first()
    assert (event.actor, event.channel, event.comment) == ("system", "system", "Duplicate")


def test_case_pages_are_for_workers_and_admins(client, login_as, make_case_type, make_case):
    type_id = make_case_type()
    reference = make_case(type_id)
    login_as("designer")
    for path in (
        "/cases/",
        "/cases/mine",
        f"/cases/{reference}",
        f"/cases/new/{type_id}",
        f"/cases/{reference}/diagram.svg",
    ):
        assert client.get(path).status_code == 403, path


def test_designer_pages_are_for_designers_and_admins(client, login_as, make_case_type):
    type_id = make_case_type()
    login_as("worker")
    for path in (
        "/case-types/",
        "/case-types/new",
        f"/case-types/{type_id}",
        f"/case-types/{type_id}/diagram.svg",
        f"/case-types/{type_id}/stages/submission",
    ):
        assert client.get(path).status_code == 403, path


@both_databases
def test_a_line_break_in_a_case_value_cannot_start_a_header_in_a_notification(
    app, make_case_type, make_case
):
    from webapp.services.cases import apply_action, find_case

    type_id = make_case_type()
    reference = make_case(type_id, subject="Train\r\nBcc: everyone@example.com")
    with app.app_context():
        case = find_case(reference)
        for action in ("submit", "approve", "mark_paid"):
            apply_action(case, action, user=None)
        db.session.commit()
        subjects = [m.subject for m in db.session.scalars(select(OutboundMessage))]
    assert f"[{reference}] is approved: Train Bcc: everyone@example.com" in subjects
    assert not any("\r" in s or "\n" in s for s in subjects)


def test_an_attachment_name_with_control_characters_still_downloads(
    app, client, login_as, make_case_type, make_case
):
    from webapp.services.cases import add_attachment, find_case

    type_id = make_case_type()
    login_as("worker")
    reference = make_case(type_id)
    with app.app_context():
        case = find_case(reference)
        attachment = add_attachment(
            case, "C:\\fakepath\\bill\r\nSet-Cookie: x=1.pdf", "application/pdf", b"%PDF", user=None
        )
        db.session.commit()
        attachment_id = attachment.id
    download = client.get(f"/cases/{reference}/attachments/{attachment_id}")
    assert download.status_code == 200
    assert download.headers["Content-Disposition"].startswith(
        'attachment; filename="billSet-Cookie: x=1.pdf"'
    )
    assert "Set-Cookie" not in download.headers


@both_databases
def test_a_comment_racing_another_change_is_refused_not_an_error(
    app, client, login_as, make_case_type, make_case
):
    from sqlalchemy import update

    from webapp.services.cases import AlreadyProcessed, add_comment, find_case

    type_id = make_case_type()
    reference = make_case(type_id)
    with app.app_context():
        case = find_case(reference)
        with db.engine.begin() as other:
            other.execute(
                update(Case).where(Case.id == case.id).values(row_version=Case.row_version + 1)
            )
        with pytest.raises(AlreadyProcessed, match="changed by someone else"):
            add_comment(case, "Looks fine", user=None)
        db.session.rollback()


@both_databases
def test_my_work_matches_approver_addresses_literally(app, make_user, make_case_type, make_case):
    from webapp.services.cases import QueueFilter, apply_action, find_case, queue_page

    approver = make_user("worker", email="axb@example.com")
    # In LIKE, _ matches any one character: this address must not match the approver's.
    lookalike = make_user("worker", email="a_b@example.com")
    type_id = make_case_type()
    reference = make_case(type_id, fields={**EXPENSE_FIELDS, "manager_email": "axb@example.com"})
    with app.app_context():
        apply_action(find_case(reference), "submit", user=None)
        db.session.commit()
        mine = QueueFilter(mine_for=db.session.merge(lookalike))
        assert [c.reference for c in queue_page(mine).items] == []
        theirs = QueueFilter(mine_for=db.session.merge(approver))
        assert [c.reference for c in queue_page(theirs).items] == [reference]
