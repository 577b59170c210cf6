"""Signing in and out, throttling, CSRF, and role checks on every route."""

from __future__ import annotations

import pytest
from flask import Flask

from tests.fixtures.app import PASSWORD, both_databases, csrf_token

# The approval confirmation page is reached through a signed link, which is its credential.
PUBLIC_ENDPOINTS = {
    "auth.login",
    "main.healthz",
    "static",
    "bootstrap.static",
    "approvals.confirm",
}
ADMIN_PREFIXES = ("/admin", "/dev")


def _sample_path(rule) -> str:
    path = rule.rule
    for argument in rule.arguments:
        path = path.replace(f"<int:{argument}>", "1").replace(f"<{argument}>", "x")
    return path


def _routes(app: Flask, method: str) -> list[tuple[str, str]]:
    """Every non-public route taking `method`, with sample values for its arguments."""
    return [
        (rule.endpoint, _sample_path(rule))
        for rule in app.url_map.iter_rules()
        if method in (rule.methods or ()) and rule.endpoint not in PUBLIC_ENDPOINTS
    ]


@both_databases
def test_admin_signs_in_and_sees_the_dashboard(client, make_user, auth):
    user = make_user("admin", email="boss@example.com")
    response = auth.login("Boss@Example.com ", follow=True)
    html = response.get_data(as_text=True)
    assert "Welcome, boss@example.com" in html
    assert "Users" in html and "System" in html
    assert user.email == "boss@example.com"


def test_wrong_password_gives_one_sentence_and_no_session(client, make_user, auth):
    user = make_user("worker")
    response = auth.login(user.email, "wrong password")
    assert response.status_code == 200
    assert "The email or password is not right." in response.get_data(as_text=True)
    assert client.get("/").status_code == 302


def test_unknown_email_reads_the_same_as_a_wrong_password(client, auth):
    response = auth.login("nobody@example.com", "whatever it is")
    assert "The email or password is not right." in response.get_data(as_text=True)


def test_inactive_user_cannot_sign_in(app, client, make_user, auth):
    from webapp.extensions import db
    from webapp.models import User

    user = make_user("worker")
    with app.app_context():
        db.session.get(User, user.id).active = False
        db.session.commit()
    assert auth.login(user.email).status_code == 200
    assert client.get("/").status_code == 302


def test_repeated_failures_lock_the_address_for_a_while(app, client, make_user, auth):
    app.config["CASEMAIL_LOGIN_MAX_FAILURES"] = 3
    user = make_user("worker")
    for _ in range(3):
        auth.login(user.email, "wrong password")
    response = auth.login(user.email)  # even the right password is refused now
    assert response.status_code == 429
    assert "Too many failed attempts" in response.get_data(as_text=True)


def test_login_form_without_csrf_token_is_refused(client, make_user):
    user = make_user("worker")
    response = client.post("/login", data={"email": user.email, "password": PASSWORD})
    assert response.status_code == 400
    assert client.get("/").status_code == 302


def test_sign_in_never_redirects_off_site(client, make_user):
    user = make_user("worker")
    token = csrf_token(client, "/login")
    response = client.post(
        "/login?next=//evil.example/steal",
        data={"email": user.email, "password": PASSWORD, "csrf_token": token},
    )
    assert response.headers["Location"] == "/"


def test_sign_in_returns_to_the_page_asked_for(client, make_user):
    user = make_user("admin")
    token = csrf_token(client, "/login")
    response = client.post(
        "/login?next=/admin/users",
        data={"email": user.email, "password": PASSWORD, "csrf_token": token},
    )
    assert response.headers["Location"] == "/admin/users"


def test_sign_out_needs_a_post_with_csrf(client, login_as, auth):
    login_as("worker")
    assert client.get("/logout").status_code == 405
    assert client.post("/logout").status_code == 400
    assert auth.logout().status_code == 302
    assert client.get("/").status_code == 302


def test_session_cookie_is_httponly_and_samesite(client, make_user, auth):
    user = make_user("worker")
    response = auth.login(user.email)
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if "casemail_session" in c)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_production_cookies_are_secure(app_settings, redis_client, monkeypatch):
    from webapp import create_app

    monkeypatch.setenv("SECRET_KEY", "production-secret")
    monkeypatch.setenv("CASEMAIL_BASE_URL", "https://casemail.example.com")
    monkeypatch.setenv("CASEMAIL_SECRET_KEYS", ",".join(app_settings["CASEMAIL_SECRET_KEYS"]))
    settings = {k: v for k, v in app_settings.items() if k != "CASEMAIL_DEV_SANDBOX"}
    prod = create_app({**settings, "CASEMAIL_ENV": "production"})
    assert prod.config["SESSION_COOKIE_SECURE"] is True
    assert prod.config["REMEMBER_COOKIE_SECURE"] is True
    assert "devtools.mailbox" not in prod.view_functions


def test_every_page_needs_sign_in(app, client):
    routes = _routes(app, "GET")
    assert len(routes) > 5
    for endpoint, path in routes:
        response = client.get(path)
        if path.startswith("/api/"):
            assert response.status_code in (401, 404), (endpoint, response.status_code)
        else:
            assert response.status_code == 302, (endpoint, response.status_code)
            assert response.headers["Location"].startswith("/login"), endpoint


@pytest.mark.parametrize("role", ["worker", "designer"])
def test_admin_pages_refuse_other_roles(app, client, login_as, role):
    login_as(role)
    checked = 0
    for endpoint, path in _routes(app, "GET"):
        if path.startswith(ADMIN_PREFIXES):
            assert client.get(path).status_code == 403, endpoint
            checked += 1
    assert checked >= 3


def test_every_form_post_needs_a_csrf_token(app, client, login_as):
    login_as("admin")
    for endpoint, path in _routes(app, "POST"):
        if path.startswith("/api/"):
            continue
        response = client.post(path, data={"anything": "x"})
        assert response.status_code == 400, (endpoint, response.status_code)
