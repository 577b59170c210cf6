"""OAuth 2.0 profiles against a local HTTPS authority: msal grants, Google JWT bearer, Graph,
SMTP XOAUTH2, and the token cache."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from webapp.extensions import db
from webapp.mail import graph, oauth
from webapp.mail.hostpolicy import HostPolicy
from webapp.mail.oauth import REFRESH_MARGIN, OAuthError, OAuthSettings, fetch_token
from webapp.models import AuthProfile, EmailAccount
from webapp.services.accounts import check_connectivity
from webapp.services.auth_profiles import (
    AuthProfileError,
    oauth_settings,
    profile_token,
    save_profile,
)
from webapp.services.mail_settings import host_policy

DASH = "\u2013"


@pytest.fixture
def make_profile(app, test_ca_truststore):
    def make(secrets=None, **values):
        fields = {"name": f"profile-{time.monotonic_ns()}", "truststore_id": test_ca_truststore}
        fields.update(values)
        with app.app_context():
            profile = save_profile(None, fields, secrets or {})
            db.session.commit()
            return profile.id

    return make


def _token(app, pk):
    with app.app_context():
        return profile_token(db.session.get(AuthProfile, pk))


def _graph_profile(graph_server, make_profile, secret="s3cret"):  # noqa: S107
    graph_server.add_client("app-1", "s3cret")
    return make_profile(
        {"client_secret": secret},
        grant="client_credentials",
        authority=graph_server.authority,
        graph_url=graph_server.base_url,
        client_id="app-1",
    )


def test_client_credentials_through_msal_and_the_cache(app, graph_server, make_profile):
    pk = _graph_profile(graph_server, make_profile)
    first = _token(app, pk)
    assert first.access_token
    assert graph_server.token_requests[0]["grant_type"] == "client_credentials"
    assert graph_server.token_requests[0]["scope"] == "https://graph.microsoft.com/.default"
    assert _token(app, pk) == first
    assert len(graph_server.token_requests) == 1


def test_token_is_renewed_before_it_expires(app, graph_server, make_profile):
    pk = _graph_profile(graph_server, make_profile)
    first = _token(app, pk)
    with app.app_context():
        settings = oauth_settings(db.session.get(AuthProfile, pk))
        almost = first.expires_at - REFRESH_MARGIN + 1
        renewed = fetch_token(settings, host_policy(), now=almost)
    assert renewed.access_token != first.access_token
    assert len(graph_server.token_requests) == 2


def test_wrong_client_secret_gives_the_provider_error_code(app, graph_server, make_profile):
    pk = _graph_profile(graph_server, make_profile, secret="wrong")
    with pytest.raises(OAuthError) as caught:
        _token(app, pk)
    assert str(caught.value) == (
        "OAuth token request failed (invalid_client): AADSTS7000215: Invalid client secret "
        "provided."
    )


def test_authority_certificate_must_be_trusted(app, graph_server):
    graph_server.add_client("app-1", "s3cret")
    with app.app_context():
        profile = save_profile(
            None,
            {
                "name": "no truststore",
                "grant": "client_credentials",
                "authority": graph_server.authority,
                "graph_url": graph_server.base_url,
                "client_id": "app-1",
                "truststore_id": None,
            },
            {"client_secret": "s3cret"},
        )
        with pytest.raises(OAuthError, match="is not trusted"):
            profile_token(profile)


def test_password_grant(app, graph_server, make_profile, monkeypatch):
    # msal asks https://HOST/common/userrealm/... first and drops the authority's port from that
    # URL; real authorities listen on 443. Mark the test host as one without realm discovery,
    # as msal itself does after a 404.
    import msal.authority

    monkeypatch.setattr(
        msal.authority.Authority, "_domains_without_user_realm_discovery", {"127.0.0.1"}
    )
    graph_server.add_client("app-1", "s3cret")
    graph_server.add_user("support@contoso.example", "user pw")
    pk = make_profile(
        {"client_secret": "s3cret", "password": "user pw"},
        grant="password",
        authority=graph_server.authority,
        graph_url=graph_server.base_url,
        client_id="app-1",
        username="support@contoso.example",
    )
    assert _token(app, pk).access_token
    request = graph_server.token_requests[-1]
    assert request["grant_type"] == "password"
    assert request["username"] == "support@contoso.example"


def _service_account(graph_server):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    graph_server.add_google_service_account("mailer@proj.iam.example", key.public_key())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "client_email": "mailer@proj.iam.example",
            "private_key_id": "k1",
            "private_key": pem,
            "token_uri": graph_server.google_token_url,
        }
    )


def test_google_jwt_bearer_is_signed_and_verified(app, graph_server, make_profile):
    pk = make_profile(
        {"service_account_key": _service_account(graph_server)},
        grant="jwt_bearer",
        authority=graph_server.google_token_url,
        impersonate="support@example.com",
    )
    token = _token(app, pk)
    assert graph_server.state.tokens[token.access_token] == "support@example.com"


def test_google_key_from_another_account_is_refused(app, graph_server, make_profile):
    text = _service_account(graph_server)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    info = json.loads(text)
    info["private_key"] = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    pk = make_profile(
        {"service_account_key": json.dumps(info)},
        grant="jwt_bearer",
        authority=graph_server.google_token_url,
        impersonate="support@example.com",
    )
    with pytest.raises(OAuthError, match=r"\(invalid_grant\): Invalid JWT Signature"):
        _token(app, pk)


def test_profile_validation(app):
    with app.app_context(), pytest.raises(AuthProfileError) as caught:
        save_profile(
            None,
            {"name": "", "grant": "jwt_bearer", "authority": "http://169.254.169.254/token"},
            {"service_account_key": "{not json"},
        )
    errors = caught.value.errors
    assert errors["name"] == "Enter a name."
    assert errors["authority"] == "Enter an https:// URL."
    assert errors["service_account_key"].startswith("Paste the service account's JSON key file")
    assert errors["impersonate"].startswith("Enter the user to impersonate")


def test_graph_sender_and_receiver_connectivity(app, graph_server, make_profile, make_account):
    profile = _graph_profile(graph_server, make_profile)
    graph_server.add_mailbox("support@contoso.example", ["Inbox", "Sent Items", "Archive"])
    pk = make_account(
        provider="office365",
        sender_protocol="graph",
        graph_sender_upn="support@contoso.example",
        sender_auth_profile_id=profile,
        receiver_protocol="graph",
        graph_receiver_upn="support@contoso.example",
        receiver_auth_profile_id=profile,
    )
    with app.app_context():
        account = db.session.get(EmailAccount, pk)
        sender = check_connectivity(account, "sender")
        receiver = check_connectivity(account, "receiver")
        db.session.commit()
    assert sender.message == f"Microsoft Graph as support@contoso.example {DASH} 3 folders"
    assert receiver.ok and receiver.message == sender.message


def test_graph_unknown_mailbox_says_so(app, graph_server, make_profile, make_account):
    profile = _graph_profile(graph_server, make_profile)
    pk = make_account(
        provider="office365",
        receiver_protocol="graph",
        graph_receiver_upn="nobody@contoso.example",
        receiver_auth_profile_id=profile,
    )
    with app.app_context():
        result = check_connectivity(db.session.get(EmailAccount, pk), "receiver")
    assert result.message == (
        "Microsoft Graph answered 404 ErrorInvalidUser: nobody@contoso.example is not valid."
    )


def test_graph_send_mail(app, graph_server, make_profile):
    profile = _graph_profile(graph_server, make_profile)
    with app.app_context():
        row = db.session.get(AuthProfile, profile)
        settings = oauth_settings(row)
        token = profile_token(row).access_token
    message = {
        "subject": "Hello",
        "body": {"contentType": "Text", "content": "Hi"},
        "toRecipients": [{"emailAddress": {"address": "a@example.com"}}],
    }
    policy = HostPolicy.ALLOW_PRIVATE
    graph.send_mail(
        graph_server.base_url, "support@contoso.example", token, settings, policy, message
    )
    assert graph_server.sent == [("support@contoso.example", message)]
    with pytest.raises(graph.GraphError, match="InvalidAuthenticationToken"):
        graph.send_mail(
            graph_server.base_url, "x@contoso.example", "bad", settings, policy, message
        )


def test_smtp_xoauth2_with_the_profile_token(
    app, graph_server, make_profile, make_account, smtp_server
):
    profile = _graph_profile(graph_server, make_profile)
    token = _token(app, profile).access_token
    server = smtp_server(xoauth2_tokens={"support@example.com": token}, mechanisms=["XOAUTH2"])
    pk = make_account(smtp_port=server.port, smtp_auth="oauth", sender_auth_profile_id=profile)
    with app.app_context():
        result = check_connectivity(db.session.get(EmailAccount, pk), "sender")
    assert result.message == (
        f"SMTP (Connect using default) {DASH} insecure connection as support@example.com"
    )
    assert server.auth_mechanisms_used == ["XOAUTH2"]


def test_smtp_xoauth2_refused_token(app, graph_server, make_profile, make_account, smtp_server):
    profile = _graph_profile(graph_server, make_profile)
    server = smtp_server(xoauth2_tokens={"support@example.com": "other"}, mechanisms=["XOAUTH2"])
    pk = make_account(smtp_port=server.port, smtp_auth="oauth", sender_auth_profile_id=profile)
    with app.app_context():
        result = check_connectivity(db.session.get(EmailAccount, pk), "sender")
    assert result.message.startswith(
        "Authentication failed for support@example.com: the server answered 535"
    )


def test_admin_manages_a_profile_in_the_browser_forms(
    app, client, login_as, graph_server, test_ca_truststore
):
    from tests.fixtures.app import csrf_token

    graph_server.add_client("app-1", "s3cret")
    login_as("admin")
    data = {
        "name": "Contoso Graph",
        "grant": "client_credentials",
        "authority": graph_server.authority,
        "graph_url": graph_server.base_url,
        "client_id": "app-1",
        "client_secret": "s3cret",
        "scopes": "",
        "username": "",
        "password": "",
        "service_account_key": "",
        "impersonate": "",
        "truststore_id": str(test_ca_truststore),
    }
    token = csrf_token(client, "/admin/auth-profiles/new")
    response = client.post("/admin/auth-profiles/new", data={**data, "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)
    with app.app_context():
        pk = db.session.scalar(db.select(AuthProfile.id))
    page = client.get(f"/admin/auth-profiles/{pk}").get_data(as_text=True)
    assert "s3cret" not in page
    response = client.post(
        f"/admin/auth-profiles/{pk}/token", data={"csrf_token": token}, follow_redirects=True
    )
    assert "Contoso Graph: a token was issued, valid until" in response.get_data(as_text=True)

    bad = {**data, "name": "Google", "grant": "jwt_bearer", "service_account_key": "{oops"}
    response = client.post("/admin/auth-profiles/new", data={**bad, "csrf_token": token})
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "Paste the service account&#39;s JSON key file" in html
    assert "{oops" not in html


def test_quick_form_with_an_oauth_profile_instead_of_a_password(
    app, client, login_as, graph_server, make_profile
):
    from tests.fixtures.app import csrf_token

    profile = _graph_profile(graph_server, make_profile)
    login_as("admin")
    fields = {
        "account_id": "o365",
        "name": "Office",
        "provider": "office365",
        "email": "desk@contoso.example",
        "password": "",
        "auth_profile_id": "",
        "smtp_host": "",
        "smtp_port": "",
        "smtp_security": "starttls",
        "receiver_protocol": "imap",
        "receiver_host": "",
        "receiver_port": "",
        "receiver_security": "ssl",
        "csrf_token": csrf_token(client, "/admin/accounts/new"),
    }
    response = client.post("/admin/accounts/new", data=fields)
    assert response.status_code == 400
    assert "Enter the password." in response.get_data(as_text=True)

    response = client.post("/admin/accounts/new", data={**fields, "auth_profile_id": str(profile)})
    assert response.status_code == 302, response.get_data(as_text=True)
    with app.app_context():
        account = db.session.scalar(db.select(EmailAccount))
        assert (account.smtp_auth, account.receiver_auth) == ("oauth", "oauth")
        assert account.sender_auth_profile_id == account.receiver_auth_profile_id == profile
        assert account.smtp_host == "smtp.office365.com"
        assert account.smtp_password_encrypted is None


def test_changed_client_secret_is_used_at_once(app, graph_server, make_profile):
    pk = _graph_profile(graph_server, make_profile)
    assert _token(app, pk).access_token
    with app.app_context():
        profile = db.session.get(AuthProfile, pk)
        values = {
            name: getattr(profile, name)
            for name in ("name", "grant", "authority", "graph_url", "client_id", "truststore_id")
        }
        save_profile(profile, values, {"client_secret": "not the secret"})
        db.session.commit()
    with pytest.raises(OAuthError, match="invalid_client"):
        _token(app, pk)


def test_token_endpoint_named_by_the_authority_is_checked_too(app, graph_server, make_profile):
    pk = _graph_profile(graph_server, make_profile)
    graph_server.state.token_endpoint = "https://169.254.169.254/latest/api/token"
    with pytest.raises(OAuthError) as caught:
        _token(app, pk)
    assert str(caught.value) == (
        "OAuth token request failed: 169.254.169.254 is a link-local or cloud metadata address "
        "(169.254.169.254); mail servers are never reached there."
    )


def test_graph_redirect_to_a_metadata_address_is_refused(
    app, graph_server, make_profile, make_account
):
    profile = _graph_profile(graph_server, make_profile)
    graph_server.state.redirects["/v1.0/users/support@contoso.example/mailFolders"] = (
        "https://169.254.169.254/latest/meta-data/"
    )
    pk = make_account(
        provider="office365",
        receiver_protocol="graph",
        graph_receiver_upn="support@contoso.example",
        receiver_auth_profile_id=profile,
    )
    with app.app_context():
        result = check_connectivity(db.session.get(EmailAccount, pk), "receiver")
    assert not result.ok
    assert result.message == (
        "Microsoft Graph could not be reached: 169.254.169.254 is a link-local or cloud "
        "metadata address (169.254.169.254); mail servers are never reached there."
    )


def test_graph_answer_that_is_not_a_folder_list_is_one_sentence(
    app, graph_server, make_profile, make_account
):
    profile = _graph_profile(graph_server, make_profile)
    # The authority's discovery document is JSON, but not Graph's answer.
    graph_server.state.redirects["/v1.0/users/support@contoso.example/mailFolders"] = (
        f"{graph_server.authority}/v2.0/.well-known/openid-configuration"
    )
    pk = make_account(
        provider="office365",
        receiver_protocol="graph",
        graph_receiver_upn="support@contoso.example",
        receiver_auth_profile_id=profile,
    )
    with app.app_context():
        result = check_connectivity(db.session.get(EmailAccount, pk), "receiver")
    assert not result.ok
    assert result.message == (
        f"{graph_server.base_url} did not answer like Microsoft Graph (no folder list); check "
        "the Graph endpoint of the OAuth 2.0 profile."
    )


def test_authority_that_never_answers_times_out(monkeypatch):
    monkeypatch.setattr(oauth, "HTTP_TIMEOUT", 1)
    silent = socket.create_server(("127.0.0.1", 0))
    settings = OAuthSettings(
        grant="client_credentials",
        authority=f"https://127.0.0.1:{silent.getsockname()[1]}/tenant",
        client_id="app-1",
        client_secret="s3cret",
        scopes=("https://graph.microsoft.com/.default",),
    )
    outcome: list[BaseException] = []

    def request() -> None:
        try:
            fetch_token(settings, HostPolicy.ALLOW_PRIVATE)
        except OAuthError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=request, daemon=True)
    try:
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive(), "the token request did not time out"
    finally:
        silent.close()
    assert [str(e) for e in outcome] == [
        "OAuth token request failed: 127.0.0.1 did not answer within 1 seconds."
    ]


def test_profile_form_shows_every_refused_field_at_once(app, client, login_as):
    from tests.fixtures.app import csrf_token

    login_as("admin")
    token = csrf_token(client, "/admin/auth-profiles/new")
    response = client.post(
        "/admin/auth-profiles/new",
        data={
            "csrf_token": token,
            "name": "",
            "grant": "client_credentials",
            "authority": "https://169.254.169.254/tenant",
            "graph_url": "https://graph.microsoft.com",
            "client_id": "",
        },
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "This field is required." in html  # the form's word on the name
    assert "169.254.169.254 is a link-local or cloud metadata address" in html
    assert "Enter the application (client) ID." in html
    assert "Enter the client secret." in html
    assert "Enter a name." not in html


def test_switching_the_grant_drops_the_secrets_it_no_longer_uses(app, make_profile):
    pk = make_profile(
        {"client_secret": "s3cret", "password": "user pw"},
        grant="password",
        authority="https://login.microsoftonline.com/contoso",
        graph_url="https://graph.microsoft.com",
        client_id="app-1",
        username="support@contoso.example",
    )
    with app.app_context():
        profile = db.session.get(AuthProfile, pk)
        values = {
            name: getattr(profile, name)
            for name in ("name", "grant", "authority", "graph_url", "client_id", "truststore_id")
        }
        save_profile(profile, {**values, "grant": "client_credentials"}, {})
        db.session.commit()
        assert profile.client_secret_encrypted is not None
        assert profile.password_encrypted is None
