"""An admin creates email accounts with the quick form and the full editor and tests them."""

from __future__ import annotations

from playwright.sync_api import expect

DASH = "\u2013"


def test_quick_form_fills_presets_and_tests_the_sender(
    sign_in, page, make_user, screenshot, smtp_server
):
    admin = make_user("admin", email="admin@example.com")
    server = smtp_server(auth={"desk@example.com": "desk password"})
    sign_in(admin.email)

    page.get_by_role("link", name="Email accounts").click()
    expect(page.get_by_role("heading", name="No email accounts yet")).to_be_visible()
    screenshot("empty")
    page.get_by_role("link", name="New account", exact=True).first.click()

    page.get_by_label("Email provider").select_option("gmail")
    expect(page.get_by_label("SMTP host")).to_have_value("smtp.gmail.com")
    expect(page.get_by_label("SMTP port")).to_have_value("587")
    expect(page.get_by_label("Receiver host")).to_have_value("imap.gmail.com")
    page.get_by_label("Receive using").select_option("pop3")
    expect(page.get_by_label("Receiver host")).to_have_value("pop.gmail.com")
    expect(page.get_by_label("Receiver port")).to_have_value("995")
    screenshot("quick-gmail")

    page.get_by_label("Account ID").fill("desk")
    page.get_by_label("Account name").fill("Help desk")
    page.get_by_label("Email address").fill("desk@example.com")
    page.get_by_label("Password").fill("desk password")
    page.get_by_label("SMTP host").fill("127.0.0.1")
    page.get_by_label("SMTP port").fill(str(server.port))
    page.get_by_label("SMTP security").select_option("none")
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("alert")).to_contain_text("Account desk saved.")

    page.get_by_role("button", name="Test sender connectivity").click()
    expect(page.get_by_role("alert")).to_contain_text(
        f"SMTP (Connect using default) {DASH} insecure connection as desk@example.com"
    )
    expect(page.locator(".test-result.test-ok")).to_be_visible()
    screenshot("quick-tested")

    page.get_by_role("link", name="Email accounts").first.click()
    row = page.get_by_role("row", name="desk")
    expect(row).to_contain_text("SMTP")
    expect(row).to_contain_text("POP3")
    expect(row).to_contain_text("OK")
    screenshot("list")


def test_full_editor_with_errors_then_receiver_test(
    live_server, page, make_user, screenshot, dovecot, mailbox_user, sign_in
):
    admin = make_user("admin", email="admin@example.com")
    sign_in(admin.email)
    page.goto(live_server.url + "/admin/accounts/new/full")

    page.get_by_label("Account ID").fill("inbox")
    page.get_by_label("Account name").fill("Inbound mail")
    page.get_by_label("Send using").select_option("smtp")
    page.get_by_label("Authenticate using", exact=True).select_option("none")
    page.locator("#smtp_email").fill("inbox@example.com")
    page.locator("#smtp_host").fill("169.254.169.254")
    page.locator("#smtp_port").fill("25")
    page.get_by_label("Use secure connection").select_option("none")
    page.get_by_label("Use sender's ID and password").uncheck()
    page.get_by_label("Receiver user ID").fill(mailbox_user.login)
    page.get_by_label("Receiver password").fill(mailbox_user.password)
    page.get_by_label("Receiver host").fill("127.0.0.1")
    page.get_by_label("Receiver port").fill(str(dovecot.imap_port))
    page.get_by_label("Use SSL/TLS").select_option("none")
    page.get_by_label("Receiver advanced settings").fill("mail.imap.timeout=often")
    page.get_by_role("button", name="Save account").click()
    expect(
        page.get_by_text("mail.imap.timeout must be a whole number of milliseconds")
    ).to_be_visible()
    expect(
        page.get_by_text("169.254.169.254 is a link-local or cloud metadata address")
    ).to_be_visible()
    screenshot("editor-errors")

    page.get_by_label("Receiver advanced settings").fill("mail.imap.timeout=5000")
    page.get_by_label("Receiver password").fill(mailbox_user.password)
    page.get_by_role("button", name="Save account").click()
    expect(
        page.get_by_text("169.254.169.254 is a link-local or cloud metadata address")
    ).to_be_visible()
    page.locator("#smtp_host").fill("127.0.0.1")
    page.get_by_label("Receiver password").fill(mailbox_user.password)
    page.get_by_role("button", name="Save account").click()
    expect(page.get_by_role("alert")).to_contain_text("Account inbox saved.")

    page.get_by_role("button", name="Test receiver connectivity").click()
    expect(page.get_by_role("alert")).to_contain_text(
        f"IMAP (default) {DASH} insecure connection as {mailbox_user.login} {DASH} 1 folder"
    )
    screenshot("editor-tested")

    page.get_by_role("link", name="Edit").click()
    expect(page.get_by_label("Receiver password")).to_have_value("")
    expect(page.get_by_label("Receiver advanced settings")).to_have_value("mail.imap.timeout=5000")
    screenshot("editor-edit")


def test_editor_sections_follow_the_choices(live_server, page, make_user, screenshot, sign_in):
    admin = make_user("admin", email="admin@example.com")
    sign_in(admin.email)
    page.goto(live_server.url + "/admin/accounts/new/full")
    graph_option = page.locator("#sender_protocol option[value=graph]")
    expect(graph_option).to_be_disabled()
    page.get_by_label("Email provider").select_option("office365")
    expect(graph_option).to_be_enabled()
    expect(page.locator("#smtp_host")).to_have_value("smtp.office365.com")
    page.get_by_label("Send using").select_option("graph")
    expect(page.locator("#smtp_host")).to_be_hidden()
    expect(page.get_by_label("User principal name", exact=True)).to_be_visible()
    page.get_by_label("Receive using").select_option("pop3")
    expect(page.locator("#receiver_security option[value=starttls]")).to_be_disabled()
    page.get_by_label("Receive using").select_option("imap")
    expect(page.get_by_label("Receiver user ID")).to_be_hidden()
    page.get_by_label("Use sender's ID and password").uncheck()
    expect(page.get_by_label("Receiver user ID")).to_be_visible()
    page.get_by_label("Receiver authenticate using").select_option("oauth")
    expect(page.get_by_label("Use sender's ID and password")).to_be_hidden()
    expect(page.get_by_label("Receiver password")).to_be_hidden()
    expect(page.get_by_label("Receiver user ID")).to_be_visible()
    page.get_by_label("Email provider").select_option("gmail")
    expect(page.get_by_label("Send using")).to_have_value("smtp")
    screenshot("editor-sections")


def test_keystore_upload_shows_certificates_and_expiry(
    live_server, page, make_user, screenshot, test_ca, sign_in
):
    admin = make_user("admin", email="admin@example.com")
    sign_in(admin.email)
    page.goto(live_server.url + "/admin/accounts")
    page.get_by_role("link", name="Keystores").click()
    page.get_by_role("link", name="Upload keystore").first.click()
    page.get_by_label("Name").fill("Corporate CA")
    page.get_by_label("File").set_input_files(str(test_ca.ca_cert))
    page.get_by_role("button", name="Upload keystore").click()
    expect(page.get_by_role("alert").first).to_contain_text("Keystore Corporate CA saved.")
    expect(page.get_by_text("CN=Casemail test CA,O=Casemail tests").first).to_be_visible()
    expect(page.get_by_text("Some certificates expire within 30 days")).to_be_visible()
    screenshot("keystore")
