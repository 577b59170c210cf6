"""An admin makes a case type's cases come from a mailbox; a designer sees who to ask."""

from __future__ import annotations

import re

from playwright.sync_api import expect


def test_admin_creates_cases_from_email(
    live_server,
    page,
    make_user,
    screenshot,
    dovecot,
    mailbox_user,
    mailbox_account,
    make_case_type,
    sign_in,
):
    admin = make_user("admin", email="admin@example.com")
    designer = make_user("designer", email="designer@example.com")
    dovecot.create_folder(mailbox_user.login, "Claims")
    mailbox_account(account_id="claims")
    make_case_type()
    sign_in(admin.email)

    page.goto(live_server.url + "/case-types/")
    page.get_by_role("link", name="Expense approval").first.click()
    page.get_by_role("link", name="Create cases from email").click()
    page.get_by_label("Folder to watch").select_option("Claims")
    screenshot("form")
    page.get_by_role("button", name="Create listener and rule").click()

    flash = page.get_by_role("alert")
    expect(flash).to_contain_text("Cases of Expense approval now come from email")
    expect(page.locator("#email")).to_contain_text("Expense approval from claims (Claims)")
    screenshot("case-type")
    flash.get_by_role("link", name="listener Expense approval from claims (Claims)").click()
    expect(page).to_have_url(re.compile(r"/admin/listeners/\d+$"))
    expect(page.get_by_label("Folder to watch")).to_have_value("Claims")

    page.goto(live_server.url + "/logout")
    page.context.clear_cookies()
    sign_in(designer.email)
    page.goto(live_server.url + "/case-types/")
    page.get_by_role("link", name="Expense approval").first.click()
    expect(page.get_by_role("button", name="Create cases from email")).to_be_disabled()
    expect(page.get_by_text("ask an admin to create cases from email")).to_be_visible()
    screenshot("designer")
