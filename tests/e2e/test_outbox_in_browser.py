"""An admin finds a message held by a rate limit in the outbox, sends it anyway, cancels another."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.fixtures.app import PASSWORD
from tests.integration import test_outbox as base
from tests.integration.test_outbox import queue, row, send
from workers.queues import OUTBOUND
from workers.worker import run_worker

smtp_account = base.smtp_account


def test_admin_releases_a_held_message_and_cancels_another(
    app, live_server, page, make_user, screenshot, smtp_account
):
    server, account_id = smtp_account
    app.config["CASEMAIL_RATE_LIMIT_PER_RECIPIENT"] = 1
    ids = [queue(app, account_id, subject=f"Reminder {n}") for n in range(3)]
    send(app, ids)
    assert [row(app, i).status for i in ids] == ["sent", "held", "held"]
    admin = make_user("admin", email="admin@example.com")

    page.goto(live_server.url + "/login")
    page.get_by_label("Email").fill(admin.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Admin", exact=True).click()
    page.get_by_role("link", name="Outgoing mail").click()

    expect(page.locator("#outbox-attention")).to_contain_text("2 messages need your attention")
    held = page.locator(f"#outbound-{ids[1]}")
    expect(held).to_contain_text("Held")
    expect(held).to_contain_text("the limit per recipient")
    screenshot("held")
    held.get_by_role("button", name="Send again").click()
    expect(page.get_by_role("alert").first).to_contain_text(
        f"Message {ids[1]} is being sent again."
    )
    # Cancelling asks first: said no, nothing happens; said yes, the message is cancelled.
    questions: list[str] = []

    def answer(dialog, accept: bool) -> None:
        questions.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    cancel = page.locator(f"#outbound-{ids[2]}").get_by_role("button", name="Cancel")
    page.once("dialog", lambda dialog: answer(dialog, False))
    cancel.click()
    expect(page.locator(f"#outbound-{ids[2]}")).not_to_contain_text("Cancelled")
    page.once("dialog", lambda dialog: answer(dialog, True))
    cancel.click()
    expect(page.get_by_role("alert").first).to_contain_text(f"Message {ids[2]} is cancelled")
    assert questions == ["Cancel this message? It will not be sent."] * 2

    assert run_worker(app, [OUTBOUND], burst=True) is True
    page.reload()
    expect(page.locator(f"#outbound-{ids[1]}")).to_contain_text("Sent")
    expect(page.locator(f"#outbound-{ids[2]}")).to_contain_text("Cancelled")
    expect(page.locator("#outbox-attention")).to_have_count(0)
    screenshot("done")
    assert [m.parsed["Subject"] for m in server.wait_for(2)] == ["Reminder 0", "Reminder 1"]
