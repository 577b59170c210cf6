"""Admins manage users in the browser; the CLI creates users and API tokens."""

from __future__ import annotations

from sqlalchemy import select

from tests.fixtures.app import PASSWORD, both_databases, csrf_token
from webapp.extensions import db
from webapp.models import ApiToken, User


def _create(client, **fields):
    data = {"email": "", "name": "", "role": "worker", "password": "", **fields}
    data["csrf_token"] = csrf_token(client, "/admin/users/new")
    return client.post("/admin/users/new", data=data)


@both_databases
def test_admin_creates_a_user_who_can_then_sign_in(app, client, login_as, auth):
    login_as("admin")
    response = _create(
        client,
        email="new.person@example.com",
        name="New Person",
        role="designer",
        password="a long password",
    )
    assert response.status_code == 302
    listing = client.get("/admin/users").get_data(as_text=True)
    assert "new.person@example.com" in listing and "designer" in listing
    auth.logout()
    assert auth.login("new.person@example.com", "a long password").status_code == 302


def test_bad_input_gets_messages_beside_the_fields_and_saves_nothing(app, client, login_as):
    login_as("admin")
    response = _create(client, email="not-an-email", password="short")
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "Invalid email address." in html
    assert "Use at least 10 characters (and at most 1000)." in html
    assert 'class="invalid-feedback' in html
    with app.app_context():
        assert db.session.scalar(select(User).where(User.email == "not-an-email")) is None


def test_a_taken_email_is_refused(app, client, login_as):
    admin = login_as("admin")
    response = _create(client, email=admin.email.upper(), password="a long password")
    assert response.status_code == 400
    assert f"A user with the email {admin.email} already exists." in response.get_data(as_text=True)


def test_admin_changes_a_role_and_the_user_sees_it(app, client, login_as, make_user):
    login_as("admin")
    worker = make_user("worker")
    token = csrf_token(client, f"/admin/users/{worker.id}")
    response = client.post(
        f"/admin/users/{worker.id}",
        data={"name": "Wendy", "role": "designer", "active": "y", "csrf_token": token},
    )
    assert response.status_code == 302
    with app.app_context():
        assert db.session.get(User, worker.id).role == "designer"


def test_the_last_admin_cannot_be_demoted(app, client, login_as):
    admin = login_as("admin")
    token = csrf_token(client, f"/admin/users/{admin.id}")
    response = client.post(
        f"/admin/users/{admin.id}",
        data={"role": "worker", "active": "y", "csrf_token": token},
    )
    assert response.status_code == 400
    assert "This is the last active admin" in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(User, admin.id).role == "admin"


def test_deactivating_a_user_ends_their_session(app, client, login_as, make_user, auth):
    other = app.test_client()
    worker = make_user("worker")
    from tests.fixtures.app import AuthActions

    AuthActions(other).login(worker.email)
    assert other.get("/").status_code == 200
    login_as("admin")
    token = csrf_token(client, f"/admin/users/{worker.id}")
    client.post(f"/admin/users/{worker.id}", data={"role": "worker", "csrf_token": token})
    assert other.get("/").status_code == 302


def test_user_list_paginates_and_searches(app, client, login_as, make_user):
    login_as("admin")
    for i in range(30):
        make_user("worker", email=f"person{i:02d}@example.com")
    first = client.get("/admin/users").get_data(as_text=True)
    assert "1\N{EN DASH}25 of 31" in first
    second = client.get("/admin/users?page=2").get_data(as_text=True)
    assert "26\N{EN DASH}31 of 31" in second
    found = client.get("/admin/users?q=person07").get_data(as_text=True)
    assert "person07@example.com" in found and "person08@example.com" not in found


def test_cli_creates_a_user_from_stdin(app, runner):
    result = runner.invoke(
        args=["users", "create", "ops@example.com", "--role", "admin"], input=PASSWORD + "\n"
    )
    assert result.exit_code == 0, result.output
    assert "Created ops@example.com (admin)." in result.output
    with app.app_context():
        assert (
            db.session.scalar(select(User.role).where(User.email == "ops@example.com")) == "admin"
        )


def test_cli_refuses_a_weak_password_and_a_duplicate(app, runner, make_user):
    result = runner.invoke(args=["users", "create", "x@example.com"], input="short\n")
    assert result.exit_code == 1
    assert "at least 10 characters" in result.output
    existing = make_user("worker")
    result = runner.invoke(args=["users", "create", existing.email], input=PASSWORD + "\n")
    assert result.exit_code == 1
    assert "already exists" in result.output


@both_databases
def test_api_token_from_the_cli_authenticates_api_calls(app, client, runner, make_user):
    user = make_user("designer")
    result = runner.invoke(args=["users", "token", user.email])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    response = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json["email"] == user.email and response.json["role"] == "designer"
    with app.app_context():
        stored = db.session.scalar(select(ApiToken))
        assert token not in (stored.token_hash, stored.prefix)
        assert stored.last_used_at is not None


def test_api_refuses_bad_revoked_and_cookie_only_access(app, client, login_as, make_user):
    user = login_as("worker")
    assert client.get("/api/v1/me").status_code == 401  # the session cookie is not enough
    assert client.get("/api/v1/me", headers={"Authorization": "Bearer cm_nope"}).status_code == 401
    token = csrf_token(client, "/account")
    page = client.post("/account/tokens", data={"name": "script", "csrf_token": token})
    assert page.status_code == 201
    html = page.get_data(as_text=True)
    plaintext = html.split('id="new-token">')[1].split("<")[0]
    headers = {"Authorization": f"Bearer {plaintext}"}
    assert client.get("/api/v1/me", headers=headers).json["email"] == user.email
    with app.app_context():
        token_id = db.session.scalar(select(ApiToken.id))
    client.post(f"/account/tokens/{token_id}/revoke", data={"csrf_token": token})
    assert client.get("/api/v1/me", headers=headers).status_code == 401
    assert plaintext not in client.get("/account").get_data(as_text=True)


def test_user_changes_own_password_and_other_sessions_end(app, client, login_as):
    user = login_as("worker")
    from tests.fixtures.app import AuthActions

    other = app.test_client()
    AuthActions(other).login(user.email)
    token = csrf_token(client, "/account")
    response = client.post(
        "/account/password",
        data={
            "current_password": PASSWORD,
            "new_password": "another long one",
            "confirm": "another long one",
            "csrf_token": token,
        },
    )
    assert response.status_code == 302
    assert client.get("/").status_code == 200  # this session goes on
    assert other.get("/").status_code == 302  # the other one ended


def test_wrong_current_password_is_said_beside_the_field(client, login_as):
    login_as("worker")
    token = csrf_token(client, "/account")
    response = client.post(
        "/account/password",
        data={
            "current_password": "not it at all",
            "new_password": "another long one",
            "confirm": "another long one",
            "csrf_token": token,
        },
    )
    assert response.status_code == 400
    assert "This is not your current password." in response.get_data(as_text=True)


def test_user_search_takes_wildcard_characters_literally(client, login_as, make_user):
    login_as("admin")
    make_user("worker", email="a_b@example.com")
    make_user("worker", email="axb@example.com")
    found = client.get("/admin/users?q=a_b").get_data(as_text=True)
    assert "a_b@example.com" in found and "axb@example.com" not in found
    assert "No users match" in client.get("/admin/users?q=%25").get_data(as_text=True)
