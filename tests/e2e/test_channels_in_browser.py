"""An admin builds an email channel in Chromium and tries it on the rule tester."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import expect

from tests.fixtures.app import PASSWORD
from tests.support.inbound import message


def test_channel_pages_and_tester(
    live_server, page, make_user, make_case_type, screenshot, tmp_path: Path
):
    base = live_server.url
    admin = make_user("admin", email="ada@example.com")
    make_case_type()
    eml = tmp_path / "news.eml"
    eml.write_bytes(message(subject="Our newsletter", sender="news@example.org"))

    page.goto(base + "/login")
    page.get_by_label("Email").fill(admin.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    page.goto(base + "/admin/channels/")
    expect(page.get_by_role("heading", name="No channels yet")).to_be_visible()
    page.get_by_role("link", name="New channel").first.click()
    page.get_by_label("Name").fill("Triage")
    page.get_by_label("Default route").select_option("case_type")
    page.get_by_label("Default case type").select_option(label="Expense approval")
    page.get_by_role("button", name="Save channel").click()
    expect(page.get_by_role("alert")).to_contain_text("Created the channel Triage")

    page.get_by_label("Conditions").fill("subject regex (newsletter")
    page.get_by_role("button", name="Add route").click()
    expect(page.get_by_text("is not valid")).to_be_visible()
    screenshot("channel-route-error")
    page.get_by_label("Conditions").fill(
        "subject contains newsletter\nsender_domain equals example.org"
    )
    page.get_by_label("Then").select_option("ignore")
    page.get_by_role("button", name="Add route").click()
    page.get_by_label("Conditions").fill("header:X-Priority equals 1")
    page.get_by_label("Then").select_option("quarantine")
    page.get_by_role("button", name="Add route").click()
    expect(page.locator(".channel-routes tbody tr")).to_have_count(2)
    screenshot("channel-routes")

    # Route 2 is edited where it stands: a refused edit keeps the form and the old route.
    rows = page.locator(".channel-routes tbody tr")
    rows.nth(1).get_by_role("link", name="Edit").click()
    expect(page.get_by_role("heading", name="Edit route 2")).to_be_visible()
    expect(page.get_by_label("Conditions")).to_have_value("header:X-Priority equals 1")
    page.get_by_label("Conditions").fill("subject regex [urgent")
    page.get_by_role("button", name="Save route").click()
    expect(page.get_by_text("is not valid")).to_be_visible()
    expect(rows.nth(1)).to_contain_text("header:X-Priority equals 1")
    screenshot("channel-route-edit-refused")
    page.get_by_label("Conditions").fill("header:X-Priority equals 1\nsubject contains urgent")
    page.get_by_label("Then").select_option("case_type")
    page.get_by_label("Case type", exact=True).select_option(label="Expense approval")
    page.get_by_role("button", name="Save route").click()
    expect(page.get_by_role("alert")).to_contain_text("Saved route 2.")
    expect(rows).to_have_count(2)
    expect(rows.nth(1)).to_contain_text("subject contains urgent")
    expect(rows.nth(1)).to_contain_text("New Expense approval case")
    expect(page.get_by_role("heading", name="Add a route")).to_be_visible()
    screenshot("channel-route-edited")

    page.goto(base + "/admin/rules/test")
    page.get_by_label("Or an email channel").select_option(label="Triage")
    page.get_by_label("Message (.eml)").set_input_files(str(eml))
    page.get_by_role("button", name="Test").click()
    expect(page.locator("#test-routing")).to_contain_text("Route 1 matched")
    expect(page.locator("#test-outcome")).to_contain_text("Ignored by the channel Triage")
    screenshot("channel-tester")
