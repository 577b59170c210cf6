"""An admin writes a rule in Chromium, tries a message on the rule tester, then finds a
quarantined message under Incoming mail."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import expect

from tests.fixtures.app import PASSWORD
from tests.support.inbound import message, store
from webapp.extensions import db
from webapp.services.ingest import ingest_message


def test_rule_tester_and_incoming_mail(
    live_server, page, make_user, make_case_type, screenshot, tmp_path: Path, app
):
    base = live_server.url
    admin = make_user("admin", email="ada@example.com")
    make_case_type()
    eml = tmp_path / "taxi.eml"
    eml.write_bytes(message(subject="[Travel] Taxi to the airport", body="Amount: 1,042.50 EUR\n"))

    page.goto(base + "/login")
    page.get_by_label("Email").fill(admin.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    page.get_by_role("link", name="Rules").click()
    expect(page.get_by_role("heading", name="No rules yet")).to_be_visible()
    page.get_by_role("link", name="New rule").first.click()
    page.get_by_label("Name").fill("Expenses by email")
    page.get_by_label("Case type").select_option(label="Expense approval (EXP)")
    page.get_by_label("Field mappings").fill(
        "amount body_key Amount\ncategory subject_regex (?P<category"
    )
    page.get_by_role("button", name="Save rule").click()
    expect(page.get_by_text("The expression for category does not compile")).to_be_visible()
    screenshot("rule-form-error")
    page.get_by_label("Field mappings").fill(
        "amount body_key Amount\ncategory subject_regex \\[(?P<category>\\w+)\\]"
    )
    page.get_by_role("button", name="Save rule").click()
    expect(page.get_by_role("alert")).to_contain_text("Created the rule Expenses by email.")

    page.get_by_role("link", name="Rule tester").click()
    page.get_by_label("Message (.eml)").set_input_files(str(eml))
    page.get_by_role("button", name="Test").click()
    expect(page.locator("#test-outcome")).to_contain_text("Opens a new case.")
    expect(page.get_by_role("cell", name="1042.50")).to_be_visible()
    expect(page.get_by_role("cell", name="Travel", exact=True).last).to_be_visible()
    screenshot("rule-tester")

    inbound_id = store(app, message(message_id="<lost@example.com>", subject="Lost"), None)
    with app.app_context():
        ingest_message(inbound_id)
        db.session.commit()
    page.goto(base + "/admin/inbox/")
    page.get_by_role("link", name="Lost").click()
    expect(page.locator("#status-reason")).to_contain_text("This message has no listener")
    screenshot("inbox-message")
    page.get_by_role("button", name="Replay").click()
    expect(page.get_by_role("alert")).to_contain_text("Replayed: quarantined.")
