"""An approver opens the signed link of an approval email in a browser, without signing in."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.support.approvals import links_in, new_request, set_up_loop


def test_approver_confirms_a_signed_link_in_the_browser(
    app, live_server, page, screenshot, dovecot, mailbox_user, smtp_server
):
    loop = set_up_loop(app, dovecot, mailbox_user, smtp_server())
    loop.deliver_and_process(new_request())
    reference = loop.only_case_reference()
    (request,) = loop.new_mail(1)
    links = links_in(request)

    opened = page.goto(live_server.url + links["approve"])
    assert opened is not None and opened.headers["cache-control"] == "no-store"
    expect(page.get_by_role("heading", name=f"Approve {reference}?")).to_be_visible()
    expect(page.locator("#case-summary")).to_contain_text("120.50")
    expect(page.locator("#case-summary")).to_contain_text("alice@customer.example")
    screenshot("approve")
    assert loop.case(reference).stage == "manager_approval"  # opening decided nothing

    # Switching to Reject: the stage needs a reason, and the page says so before and after.
    page.get_by_role("link", name="Reject instead").click()
    expect(page.get_by_role("heading", name=f"Reject {reference}?")).to_be_visible()
    expect(page.locator("#reason-note")).to_be_visible()
    page.get_by_role("button", name=f"Reject {reference}").click()
    expect(page.get_by_text("Give a reason for the rejection")).to_be_visible()
    screenshot("reason-needed")
    assert loop.case(reference).stage == "manager_approval"

    page.get_by_role("link", name="Approve instead").click()
    page.get_by_label("Comment").fill("Fine, the customer pays it back.")
    page.get_by_role("button", name=f"Approve {reference}").click()
    expect(page.get_by_role("heading", name=f"Approved: {reference}")).to_be_visible()
    expect(page.locator("#case-stage")).to_contain_text("Payment")
    screenshot("approved")
    case = loop.case(reference)
    assert case.stage == "payment"
    assert any(e.comment == "Fine, the customer pays it back." for e in loop.events(reference))

    again = page.goto(live_server.url + links["approve"])
    assert again is not None and again.status == 410
    expect(page.get_by_role("heading", name="Already decided")).to_be_visible()
    screenshot("already-decided")
