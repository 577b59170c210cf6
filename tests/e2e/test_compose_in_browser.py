"""A worker writes an email on the case page: mistakes are shown beside the fields, the sent
message appears under Mail and on the timeline. The demo's approval loop, in the browser."""

from __future__ import annotations

import re

from playwright.sync_api import expect
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import Case, CaseType, OutboundMessage
from webapp.services.cases import add_attachment
from workers.queues import ALL_QUEUES
from workers.worker import run_worker


def test_worker_sends_an_email_from_the_case_page(
    app, live_server, page, make_user, screenshot, make_case_type, make_case, make_account, sign_in
):
    type_id = make_case_type()
    account_id = make_account(smtp_email="support@example.com")
    reference = make_case(type_id, requester="claire@example.com")
    with app.app_context():
        db.session.get(CaseType, type_id).email_account_id = account_id
        case = db.session.scalar(select(Case).where(Case.reference == reference))
        add_attachment(case, "receipt.pdf", "application/pdf", b"%PDF-1.4 receipt", user=None)
        db.session.commit()
    worker = make_user("worker", email="worker@example.com")
    sign_in(worker.email)

    page.goto(f"{live_server.url}/cases/{reference}")
    page.get_by_role("link", name="Send email").first.click()
    expect(page.get_by_label("To", exact=True)).to_have_value("claire@example.com")
    expect(page.get_by_label("Subject")).to_have_value("Re: Train tickets")
    expect(page.locator("#placeholders")).to_contain_text("{{ amount }}")
    expect(page.locator("#placeholders")).to_contain_text("120.50")

    page.get_by_label("To", exact=True).fill("claire@example.com, boss@")
    page.get_by_label("Message").fill("Your claim of {{ amout }} is in.")
    page.get_by_role("button", name="Send email").click()
    expect(page.get_by_text("'boss@' is not a valid email address")).to_be_visible()
    expect(page.get_by_text("Unknown placeholder {{ amout }}")).to_be_visible()
    screenshot("errors")

    page.get_by_label("To", exact=True).fill("claire@example.com")
    page.get_by_label("Message").fill("Dear {{ requester }}, your claim of {{ amount }} is in.")
    page.get_by_label("receipt.pdf").check()
    page.get_by_role("button", name="Send email").click()

    expect(page.get_by_role("alert")).to_contain_text("Email to claire@example.com queued")
    mail = page.locator("#mail")
    expect(mail).to_contain_text(f"[{reference}] Re: Train tickets")
    expect(mail).to_contain_text("pending")
    expect(page.locator("#timeline")).to_contain_text("Email out")
    expect(page.locator("#timeline")).to_contain_text("Attached: receipt.pdf")
    screenshot("sent")
    with app.app_context():
        message = db.session.scalar(select(OutboundMessage))
        assert message.body == "Dear claire@example.com, your claim of 120.50 is in."
        assert len(message.attachment_ids) == 1 and message.automatic is False


def test_demo_loop_approve_by_replying_on_the_mailbox_page(
    app, runner, live_server, page, make_user, screenshot, sandbox_server, sign_in
):
    assert runner.invoke(args=["demo", "seed"]).exit_code == 0
    admin = make_user("admin", email="admin@example.com")
    sign_in(admin.email)

    page.goto(live_server.url + "/dev/mailbox")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("Sent to support@casemail.test")
    run_worker(app, ALL_QUEUES, burst=True)

    page.goto(live_server.url + "/cases/EXP-1001")
    expect(page.locator("#mail")).to_contain_text("We have your request")
    # The demo rule submitted the complete request: it waits for the manager already.
    expect(page.locator("#mail")).to_contain_text("Approve [EXP-1001]")

    page.goto(live_server.url + "/dev/mailbox")
    page.get_by_role("link", name=re.compile(r"^Approve \[EXP-1001\]")).click()
    expect(page.locator("#approval-hint")).to_be_visible()
    expect(page.get_by_label("From")).to_have_value("manager@example.com")
    expect(page.get_by_label("To", exact=True)).to_have_value(re.compile(r"^support\+\w+@"))
    screenshot("approval-request")
    page.get_by_role("button", name="Send reply").click()
    expect(page.get_by_role("alert")).to_contain_text("Reply sent")
    run_worker(app, ALL_QUEUES, burst=True)

    page.goto(live_server.url + "/cases/EXP-1001")
    expect(page.get_by_text("Payment", exact=True).first).to_be_visible()
    approvals = page.locator("#approvals")
    expect(approvals).to_contain_text("manager@example.com")
    expect(approvals).to_contain_text("approved")
    expect(approvals).to_contain_text("via email")
    expect(page.locator("#mail")).to_contain_text("approval request")
    screenshot("case-moved")
    page.goto(live_server.url + "/dev/mailbox")
    expect(page.locator(".list-group-item").first).to_contain_text(
        "From support@casemail.test to manager@example.com"
    )
