"""Admins create and edit email accounts with the quick form and the full editor."""

from __future__ import annotations

import html

from sqlalchemy import func, select

from tests.fixtures.app import both_databases, csrf_token
from tests.support.inbound import make_route
from tests.support.race import while_another_writes
from webapp.extensions import db
from webapp.models import EmailAccount
from webapp.secretbox import get_secretbox

FULL = "/admin/accounts/new/full"


def _full_fields(**overrides):
    data = {
        "account_id": "support",
        "name": "Support desk",
        "description": "Mail to support@",
        "provider": "other",
        "sender_protocol": "smtp",
        "smtp_email": "support@example.com",
        "smtp_display_name": "Example Support",
        "smtp_user_id": "support@example.com",
        "smtp_password": "smtp secret 1",
        "smtp_reply_to": "",
        "smtp_host": "mail.example.com",
        "smtp_port": "587",
        "smtp_security": "starttls",
        "smtp_tls_min": "1.2",
        "smtp_truststore_id": "",
        "smtp_auth": "password",
        "signing_keystore_id": "",
        "signing_alias": "",
        "smtp_advanced": "",
        "graph_sender_upn": "",
        "graph_sender_reply_to": "",
        "graph_sender_timeout": "",
        "receiver_protocol": "imap",
        "receiver_use_sender_credentials": "y",
        "receiver_user_id": "",
        "receiver_password": "",
        "receiver_host": "mail.example.com",
        "receiver_port": "993",
        "receiver_security": "ssl",
        "receiver_tls_min": "1.2",
        "receiver_truststore_id": "",
        "receiver_advanced": "",
        "graph_receiver_upn": "",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def _post(client, path, data):
    data = {**data, "csrf_token": csrf_token(client, path)}
    return client.post(path, data=data)


def _count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(EmailAccount)) or 0


@both_databases
def test_quick_form_fills_servers_from_the_provider_and_saves(app, client, login_as):
    login_as("admin")
    response = _post(
        client,
        "/admin/accounts/new",
        {
            "account_id": "sales",
            "name": "Sales",
            "provider": "gmail",
            "email": "sales@example.com",
            "password": "app password 123",
            "smtp_host": "",
            "smtp_port": "",
            "smtp_security": "starttls",
            "receiver_protocol": "imap",
            "receiver_host": "",
            "receiver_port": "",
            "receiver_security": "ssl",
        },
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "smtp.gmail.com:587" in page and "imap.gmail.com:993" in page
    assert "app password 123" not in page
    listing = client.get("/admin/accounts").get_data(as_text=True)
    assert "sales" in listing and "SMTP" in listing and "IMAP" in listing
    assert '<td><span class="text-secondary">None</span></td>' in listing  # no listener yet
    with app.app_context():
        account = db.session.scalar(select(EmailAccount))
        assert account.smtp_user_id == "sales@example.com"
        assert account.receiver_use_sender_credentials
        assert get_secretbox().decrypt(account.smtp_password_encrypted) == "app password 123"


def test_full_editor_saves_every_section_and_never_shows_the_password(app, client, login_as):
    login_as("admin")
    response = _post(
        client,
        FULL,
        _full_fields(
            smtp_advanced="mail.smtp.timeout=10000\nmail.smtp.auth.plain.disable=yes",
            receiver_use_sender_credentials=None,
            receiver_user_id="inbox-reader",
            receiver_password="imap secret 2",
            receiver_advanced="mail.imap.connectiontimeout=5000",
        ),
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    with app.app_context():
        account = db.session.scalar(select(EmailAccount))
        assert account.smtp_advanced == {
            "mail.smtp.timeout": "10000",
            "mail.smtp.auth.plain.disable": "true",
        }
        assert account.receiver_user_id == "inbox-reader"
        pk = account.id
    edit = client.get(f"/admin/accounts/{pk}/edit").get_data(as_text=True)
    assert "smtp secret 1" not in edit and "imap secret 2" not in edit
    assert "mail.smtp.timeout=10000" in edit

    # Saving with blank password fields keeps the stored passwords.
    response = _post(
        client,
        f"/admin/accounts/{pk}/edit",
        _full_fields(
            name="Support (renamed)",
            smtp_password="",
            receiver_use_sender_credentials=None,
            receiver_user_id="inbox-reader",
        ),
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    with app.app_context():
        account = db.session.get(EmailAccount, pk)
        assert account.name == "Support (renamed)"
        box = get_secretbox()
        assert box.decrypt(account.smtp_password_encrypted) == "smtp secret 1"
        assert box.decrypt(account.receiver_password_encrypted) == "imap secret 2"


def test_bad_input_is_shown_beside_each_field_and_nothing_is_saved(app, client, login_as):
    login_as("admin")
    response = _post(
        client,
        FULL,
        _full_fields(
            account_id="has spaces",
            smtp_port="70000",
            smtp_host="169.254.169.254",
            smtp_advanced="mail.smtp.colour=blue",
            receiver_advanced="mail.imap.timeout=soon",
            sender_protocol="graph",
        ),
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "The port is a number from 1 to 65535." in html
    assert "Unknown key mail.smtp.colour (line 1)" in html
    assert "mail.imap.timeout must be a whole number of milliseconds" in html
    # The service's refusals come in the same round as the form's, not after they are fixed.
    assert "Use 1 to 64 letters, digits, dots, hyphens or underscores" in html
    assert "Microsoft Graph can send only for the provider Microsoft Office 365." in html
    assert _count(app) == 0

    response = _post(
        client, FULL, _full_fields(account_id="has spaces", smtp_host="169.254.169.254")
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "Use 1 to 64 letters, digits, dots, hyphens or underscores" in html
    assert "169.254.169.254 is a link-local or cloud metadata address" in html
    assert 'class="invalid-feedback' in html
    assert _count(app) == 0


def test_quick_form_shows_every_refused_field_at_once(app, client, login_as):
    login_as("admin")
    response = _post(
        client,
        "/admin/accounts/new",
        {
            "account_id": "sales",
            "name": "Sales",
            "provider": "other",
            "email": "not an address",
            "password": "",
            "smtp_host": "169.254.169.254",
            "smtp_port": "587",
            "smtp_security": "starttls",
            "receiver_protocol": "imap",
            "receiver_host": "imap.example.com",
            "receiver_port": "99999",
            "receiver_security": "ssl",
        },
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "Invalid email address." in html
    assert "The port is a number from 1 to 65535." in html
    assert "169.254.169.254 is a link-local or cloud metadata address" in html
    assert "Enter the password." in html
    assert "Enter the port." not in html  # the form already said what is wrong with it
    assert _count(app) == 0


def test_graph_is_offered_only_for_office_365(app, client, login_as):
    login_as("admin")
    response = _post(client, FULL, _full_fields(sender_protocol="graph", graph_sender_upn="a@b.c"))
    assert "Microsoft Graph can send only for the provider Microsoft Office 365." in (
        response.get_data(as_text=True)
    )
    response = _post(
        client, FULL, _full_fields(receiver_protocol="graph", graph_receiver_upn="a@b.c")
    )
    assert "Microsoft Graph can receive only for the provider Microsoft Office 365." in (
        response.get_data(as_text=True)
    )
    assert _count(app) == 0


def test_public_only_policy_refuses_private_hosts_on_save(app, client, login_as):
    app.config["CASEMAIL_MAIL_HOST_POLICY"] = "public-only"
    login_as("admin")
    response = _post(client, FULL, _full_fields(smtp_host="10.1.2.3", receiver_host="localhost"))
    html = response.get_data(as_text=True)
    assert "10.1.2.3 is a private or loopback address (10.1.2.3)" in html
    assert "localhost is this machine" in html
    assert _count(app) == 0


def test_a_taken_account_id_is_refused(app, client, login_as, make_account):
    make_account("support")
    login_as("admin")
    response = _post(client, FULL, _full_fields())
    assert "An account with the ID support already exists." in response.get_data(as_text=True)


def test_test_buttons_show_the_result(app, client, login_as, make_account, smtp_server):
    server = smtp_server()
    pk = make_account("desk", smtp_port=server.port, receiver_port=1)
    login_as("admin")
    token = csrf_token(client, f"/admin/accounts/{pk}")
    response = client.post(
        f"/admin/accounts/{pk}/test/sender", data={"csrf_token": token}, follow_redirects=True
    )
    assert "SMTP (Connect using default) \u2013 insecure connection" in response.get_data(
        as_text=True
    )
    response = client.post(
        f"/admin/accounts/{pk}/test/receiver", data={"csrf_token": token}, follow_redirects=True
    )
    assert "Connection refused by 127.0.0.1:1" in response.get_data(as_text=True)
    listing = client.get("/admin/accounts").get_data(as_text=True)
    assert "OK" in listing and "Failed" in listing


def test_other_roles_cannot_reach_accounts_or_keystores(client, login_as):
    login_as("designer")
    for path in ("/admin/accounts", "/admin/accounts/new", FULL, "/admin/keystores"):
        assert client.get(path).status_code == 403, path


def test_delete_account(app, client, login_as, make_account):
    pk = make_account("gone")
    login_as("admin")
    token = csrf_token(client, f"/admin/accounts/{pk}")
    response = client.post(f"/admin/accounts/{pk}/delete", data={"csrf_token": token})
    assert response.status_code == 302
    assert _count(app) == 0


@both_databases
def test_an_account_a_listener_receives_through_is_not_deleted(
    app, client, login_as, make_account, make_case_type
):
    pk = make_account("expenses")
    listener_id = make_route(app, pk, make_case_type())
    login_as("admin")
    token = csrf_token(client, f"/admin/accounts/{pk}")
    response = client.post(
        f"/admin/accounts/{pk}/delete", data={"csrf_token": token}, follow_redirects=True
    )
    assert response.status_code == 200
    assert (
        "The listener Listener for Expenses by email receives mail through this account; "
        "move it to another account or delete it first."
    ) in html.unescape(response.get_data(as_text=True))
    assert _count(app) == 1
    listener = f'<a href="/admin/listeners/{listener_id}">Listener for Expenses by email</a>'
    assert listener in client.get("/admin/accounts").get_data(as_text=True)
    assert listener in client.get(f"/admin/accounts/{pk}").get_data(as_text=True)


@both_databases
def test_deleting_an_account_waits_for_a_listener_being_saved_on_it(app, make_account):
    """An admin saves a listener on the account while another deletes the account: the delete
    waits for the save and then refuses, naming the listener, instead of failing."""
    from webapp.models import EmailListener
    from webapp.services.accounts import AccountInUse, delete_account

    pk = make_account("expenses")

    def save_listener() -> None:
        db.session.add(EmailListener(name="Orders", account_id=pk, folder="INBOX"))
        db.session.flush()

    def delete() -> None:
        delete_account(db.session.get(EmailAccount, pk))

    assert while_another_writes(app, save_listener, delete, AccountInUse) == (
        "The listener Orders receives mail through this account; move it to another account "
        "or delete it first."
    )
    assert _count(app) == 1


@both_databases
def test_a_keystore_choice_past_the_id_range_is_refused_not_a_crash(app, client, login_as):
    login_as("admin")
    for field in ("smtp_truststore_id", "signing_keystore_id", "receiver_truststore_id"):
        for number in ("2147483648", "99999999999999999999999"):
            response = _post(client, FULL, _full_fields(**{field: number}))
            assert response.status_code == 400, (field, number)
    assert _count(app) == 0
