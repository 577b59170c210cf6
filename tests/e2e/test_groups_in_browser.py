"""An admin makes a work group in Chromium; a designer routes a stage to it; a member finds the
case under My work."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.fixtures.app import PASSWORD


def _sign_in(page, base: str, email: str) -> None:
    page.goto(base + "/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def _sign_out(page) -> None:
    page.context.clear_cookies()


def test_a_group_queue_from_admin_to_member(
    live_server, page, make_user, make_case_type, make_case, screenshot
):
    base = live_server.url
    admin = make_user("admin", email="ada@example.com")
    designer = make_user("designer", email="dana@example.com")
    member = make_user("worker", email="fay@example.com")
    make_user("worker", email="manager@example.com")
    type_id = make_case_type(publish=False)

    _sign_in(page, base, admin.email)
    page.goto(base + "/admin/groups")
    expect(page.get_by_role("heading", name="No groups yet")).to_be_visible()
    page.get_by_role("link", name="New group").first.click()
    page.get_by_label("Name").fill("Finance")
    page.get_by_label("Members").select_option(["fay@example.com"])
    screenshot("group-form")
    page.get_by_role("button", name="Save group").click()
    expect(page.get_by_role("alert")).to_contain_text("Created the group Finance.")
    screenshot("groups-list")
    _sign_out(page)

    _sign_in(page, base, designer.email)
    page.goto(f"{base}/case-types/{type_id}/stages/payment")
    page.get_by_label("Assign to").select_option("group")
    page.get_by_label("Work group").select_option("Finance")
    screenshot("stage-routed-to-group")
    page.get_by_role("button", name="Save stage").click()
    expect(page.get_by_role("alert")).to_contain_text("Saved the stage Payment.")
    page.get_by_role("button", name="Publish").first.click()
    expect(page.get_by_role("alert")).to_contain_text("Published version 1")
    _sign_out(page)

    reference = make_case(type_id)
    _sign_in(page, base, member.email)
    page.goto(f"{base}/cases/{reference}")
    page.get_by_role("button", name="Submit").click()
    # Signing out before the submission's answer arrived could cancel it.
    expect(page.get_by_role("alert")).to_contain_text("is now in Manager approval")
    _sign_out(page)
    _sign_in(page, base, "manager@example.com")
    page.goto(f"{base}/cases/{reference}")
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("alert")).to_contain_text("is now in Payment")
    _sign_out(page)

    _sign_in(page, base, member.email)
    page.goto(base + "/cases/mine")
    expect(page.get_by_role("cell", name="Finance group")).to_be_visible()
    screenshot("my-work-group-queue")
    page.get_by_role("link", name=reference).click()
    expect(page.get_by_role("button", name="Mark paid")).to_be_visible()
    screenshot("case-in-group-queue")
