"""An admin sets up a listener on the real Dovecot, polls it now and reads its health."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.fixtures.listeners import make_raw


def test_admin_creates_a_listener_and_polls_it(
    sign_in,
    page,
    make_user,
    screenshot,
    dovecot,
    mailbox_user,
    mailbox_account,
    make_account,
    make_listener,
    redis_client,
):
    admin = make_user("admin", email="admin@example.com")
    dovecot.create_folder(mailbox_user.login, "Orders")
    dovecot.create_folder(mailbox_user.login, "Done")
    for n in range(3):
        dovecot.deliver(mailbox_user.login, make_raw(f"Order {n}"), folder="Orders")
    mailbox_account(account_id="orders")
    broken = make_account(
        account_id="legacy",
        receiver_port=dovecot.imap_port,
        receiver_user_id=mailbox_user.login,
        receiver_password="wrong",
    )
    make_listener(broken, name="Legacy inbox")
    sign_in(admin.email)

    page.get_by_role("link", name="Listeners").click()
    page.get_by_role("link", name="New listener").click()
    # The first account's server refuses the sign-in: its folders cannot be listed.
    expect(page.get_by_text("did not list its folders")).to_be_visible()
    screenshot("form-note")
    page.get_by_label("Email account").select_option(label="orders: Test account (IMAP)")
    expect(page.locator("select#folder option[value=Done]")).to_be_attached()
    page.get_by_label("Name").fill("Orders")
    page.get_by_label("Folder to watch").select_option("Orders")
    page.get_by_label("After storing a message").select_option("move")
    page.get_by_label("Move to folder").select_option("Done")
    screenshot("form")
    page.get_by_role("button", name="Save listener").click()
    expect(page.get_by_role("alert")).to_contain_text("Listener Orders saved.")

    page.get_by_role("row", name="Orders").get_by_role("button", name="Poll now").click()
    expect(page.get_by_role("alert")).to_contain_text(
        "Polled Orders: fetched 3, stored 3, duplicates 0."
    )
    page.get_by_role("row", name="Legacy inbox").get_by_role("button", name="Poll now").click()
    expect(page.get_by_role("alert")).to_contain_text("Authentication failed")
    row = page.get_by_role("row", name="Orders")
    expect(row).to_contain_text("Healthy")
    expect(row).to_contain_text("3 waiting")
    expect(page.get_by_role("row", name="Legacy inbox")).to_contain_text("Last poll failed")
    screenshot("list")


def test_enter_in_the_listener_form_saves_it(
    sign_in, page, live_server, make_user, dovecot, mailbox_user, mailbox_account
):
    """The account's "Show its folders" comes first in the form; Enter still saves."""
    admin = make_user("admin", email="admin@example.com")
    mailbox_account(account_id="orders")
    sign_in(admin.email)
    page.goto(live_server.url + "/admin/listeners/new")
    page.get_by_label("Name").fill("Orders")
    page.get_by_label("Name").press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("Listener Orders saved.")
