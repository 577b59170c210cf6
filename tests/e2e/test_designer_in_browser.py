"""A designer builds a three-stage approval case type in Chromium, publishes it; a worker opens a
case and sees where it stands."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.fixtures.app import PASSWORD
from tests.fixtures.browser import ARTIFACTS


def _sign_in(page, base: str, email: str) -> None:
    page.goto(base + "/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def test_designer_builds_publishes_and_a_case_is_opened(
    live_server, page, make_user, screenshot, request
):
    base = live_server.url
    designer = make_user("designer", email="dana@example.com")
    worker = make_user("worker", email="walt@example.com")
    _sign_in(page, base, designer.email)

    page.get_by_role("link", name="Case types", exact=True).click()
    expect(page.get_by_role("heading", name="No case types yet")).to_be_visible()
    page.get_by_role("link", name="New case type").first.click()
    page.get_by_label("Name").fill("Travel approval")
    page.get_by_label("Id prefix").fill("TRV")
    page.get_by_label("Description").fill("Ask before you book a trip.")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert")).to_contain_text("Created Travel approval.")

    for name, label, kind in [
        ("destination", "Destination", "text"),
        ("cost", "Estimated cost", "money"),
        ("manager_email", "Manager's email", "email"),
    ]:
        page.get_by_role("link", name="Add field").click()
        page.get_by_label("Field name").fill(name)
        page.get_by_label("Label").fill(label)
        page.get_by_label("Type").select_option(kind)
        page.get_by_label("Required").check()
        page.get_by_role("button", name="Save field").click()
        expect(page.get_by_role("alert")).to_contain_text(f"Added the field {label}.")

    page.get_by_label("Stage name").fill("Manager approval")
    page.get_by_label("Kind").select_option("approval")
    page.get_by_role("button", name="Add stage").click()
    expect(page.get_by_role("heading", name="Manager approval approval stage")).to_be_visible()
    page.get_by_label("Approvers come from").select_option("field")
    page.get_by_label("Approver field").select_option("manager_email")
    page.locator('[name="notifications-0-recipients"]').select_option(["approvers"])
    page.get_by_label("Subject").fill("Approve {{ case_id }}: trip to {{ destination }}")
    page.get_by_label("Body").fill("{{ requester }} would like to travel for {{ cost }}.")
    page.get_by_label("SLA deadline (hours)").fill("48")
    screenshot("approval-stage-form")
    page.get_by_role("button", name="Save stage").click()
    expect(page.get_by_role("alert").first).to_contain_text("Saved the stage Manager approval.")
    # Not publishable yet: the approval stage cannot be reached and reject has nowhere to go.
    warning = page.get_by_role("status")
    expect(warning).to_contain_text("No action leads to the stage 'Manager approval'")
    expect(warning).to_contain_text("Reject needs a stage to go to")
    expect(page.get_by_role("button", name="Publish")).to_be_disabled()
    screenshot("designer-with-problems")

    page.get_by_role("link", name="Edit Intake").click()
    page.get_by_label("Stage name").fill("Request")
    page.locator('[name="actions-0-name"]').fill("Submit")
    page.locator('[name="actions-0-to"]').select_option(label="Manager approval")
    page.get_by_label("Case fields can be edited in this stage").check()
    page.get_by_role("button", name="Save stage").click()

    page.get_by_label("Stage name").fill("Resolved-Rejected")
    page.get_by_label("Kind").select_option("resolution")
    page.get_by_role("button", name="Add stage").click()
    page.get_by_label("Outcome").select_option("rejected")
    page.get_by_role("button", name="Save stage").click()

    expect(page.get_by_role("status")).to_contain_text("The draft has changes that are not")
    stages = page.locator("#stages .stage-item")
    expect(stages).to_have_count(4)
    expect(stages.nth(1)).to_contain_text(
        "Approve → Resolved-Completed; Reject → Resolved-Rejected"
    )
    expect(page.get_by_role("img", name="Stage diagram of the draft")).to_be_visible()
    screenshot("designer")

    page.get_by_role("button", name="Publish").click()
    expect(page.get_by_role("alert").first).to_contain_text(
        "Published version 1 of Travel approval."
    )
    diagram = page.get_by_role("img", name="Stage diagram of the draft")
    expect(diagram).to_be_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    diagram.screenshot(path=str(ARTIFACTS / f"{request.node.name}-diagram.png"))

    page.goto(base + "/")
    page.get_by_role("button", name=designer.email).click()
    page.get_by_role("button", name="Sign out").click()
    _sign_in(page, base, worker.email)
    page.get_by_role("link", name="Cases", exact=True).click()
    page.get_by_role("link", name="New case").first.click()
    page.get_by_role("link", name="Open a Travel approval case").click()
    page.get_by_label("Subject").fill("Customer visit in Lyon")
    page.get_by_label("Destination").fill("Lyon")
    page.get_by_label("Estimated cost").fill("seven hundred")
    page.get_by_label("Manager's email").fill("mia@example.com")
    page.get_by_role("button", name="Create case").click()
    expect(page.get_by_text("Enter an amount such as 120 or 120.50")).to_be_visible()
    page.get_by_label("Estimated cost").fill("700")
    page.get_by_role("button", name="Create case").click()
    expect(page.get_by_role("alert").first).to_contain_text("Opened TRV-1001.")
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("alert").first).to_contain_text(
        "Submit: TRV-1001 is now in Manager approval."
    )
    expect(page.get_by_text("Waiting for mia@example.com.")).to_be_visible()
    expect(
        page.get_by_role("img", name="Stage diagram with Manager approval highlighted")
    ).to_be_visible()
    screenshot("case")

    page.locator("#mainnav").get_by_role("link", name="Cases", exact=True).click()
    expect(page.get_by_role("row", name="TRV-1001")).to_contain_text("Manager approval")
    screenshot("queue")
