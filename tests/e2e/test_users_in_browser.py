"""An admin signs in with Chromium, creates a user, and the new user signs in."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.fixtures.app import PASSWORD


def test_admin_signs_in_and_creates_a_user(live_server, page, make_user, screenshot):
    admin = make_user("admin", email="admin@example.com")
    page.goto(live_server.url + "/")
    expect(page).to_have_url(live_server.url + "/login?next=/")
    screenshot("login")

    page.get_by_label("Email").fill(admin.email)
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("The email or password is not right.")

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Welcome, admin@example.com")).to_be_visible()
    screenshot("dashboard")

    page.get_by_role("button", name="Admin", exact=True).click()
    page.get_by_role("link", name="Users", exact=True).click()
    page.get_by_role("link", name="New user").click()
    page.get_by_label("Email").fill("not an email")
    page.get_by_label("Initial password").fill("short")
    page.get_by_role("button", name="Create user").click()
    expect(page.get_by_text("Invalid email address.")).to_be_visible()
    expect(page.get_by_text("Use at least 10 characters (and at most 1000).")).to_be_visible()
    screenshot("user-form-errors")

    page.get_by_label("Email").fill("dana@example.com")
    page.get_by_label("Full name").fill("Dana Designer")
    page.get_by_label("Role").select_option("designer")
    page.get_by_label("Initial password").fill("dana's long password")
    page.get_by_role("button", name="Create user").click()
    expect(page.get_by_role("alert")).to_contain_text(
        "dana@example.com can now sign in as designer."
    )
    row = page.get_by_role("row", name="dana@example.com")
    expect(row).to_contain_text("Dana Designer")
    expect(row).to_contain_text("designer")
    screenshot("users")

    page.get_by_role("button", name="admin@example.com").click()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("alert")).to_contain_text("You are signed out.")
    page.get_by_label("Email").fill("dana@example.com")
    page.get_by_label("Password").fill("dana's long password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Welcome, Dana Designer")).to_be_visible()
    expect(page.get_by_role("button", name="Admin", exact=True)).to_have_count(0)
    expect(page.get_by_role("link", name="Users", exact=True)).to_have_count(0)
    page.goto(live_server.url + "/admin/users")
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    screenshot("forbidden")
