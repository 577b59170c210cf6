"""Keystores: upload a truststore or a PKCS#12 signing keystore, list them, use them."""

from __future__ import annotations

import datetime as dt
import io

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from tests.fixtures.app import csrf_token
from tests.integration.test_accounts import FULL, _full_fields, _post
from webapp.extensions import db
from webapp.models import EmailAccount, Keystore
from webapp.services.auth_profiles import save_profile


def make_pkcs12(alias: str, password: str, days: int = 365) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{alias} signer")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return pkcs12.serialize_key_and_certificates(
        alias.encode(),
        key,
        cert,
        None,
        serialization.BestAvailableEncryption(password.encode()),
    )


def _upload(client, name, kind, content: bytes, filename: str, password: str = ""):
    token = csrf_token(client, "/admin/keystores/new")
    return client.post(
        "/admin/keystores/new",
        data={
            "csrf_token": token,
            "name": name,
            "kind": kind,
            "password": password,
            "file": (io.BytesIO(content), filename),
        },
        content_type="multipart/form-data",
    )


def test_truststore_upload_lists_certificates(app, client, login_as, test_ca):
    login_as("admin")
    response = _upload(client, "Corporate CA", "truststore", test_ca.ca_cert.read_bytes(), "ca.pem")
    assert response.status_code == 302, response.get_data(as_text=True)
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "CN=Casemail test CA,O=Casemail tests" in page
    # The test CA lives seven days: the page warns about it.
    assert "expires within 30 days" in page
    listing = client.get("/admin/keystores").get_data(as_text=True)
    assert "Corporate CA" in listing and "Truststore" in listing


def test_pkcs12_upload_lists_alias_and_keeps_the_key_encrypted(app, client, login_as):
    login_as("admin")
    data = make_pkcs12("legal", "p12 password")
    response = _upload(client, "Legal signing", "signing", data, "legal.p12", "p12 password")
    assert response.status_code == 302, response.get_data(as_text=True)
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "<code>legal</code>" in page and "CN=legal signer" in page
    assert "expires within 30 days" not in page
    with app.app_context():
        keystore = db.session.scalar(select(Keystore))
        assert keystore.pkcs12_encrypted and "p12 password" not in keystore.password_encrypted


def test_bad_uploads_get_a_message_beside_the_field(app, client, login_as):
    login_as("admin")
    response = _upload(client, "Junk", "truststore", b"not a certificate", "junk.pem")
    assert response.status_code == 400
    assert "The file is not a PEM CA bundle" in response.get_data(as_text=True)
    data = make_pkcs12("legal", "right")
    response = _upload(client, "Legal", "signing", data, "legal.p12", "wrong")
    assert "or the keystore password is not right." in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(Keystore)) is None


def test_signing_keystore_and_alias_on_the_account(app, client, login_as):
    login_as("admin")
    _upload(client, "Legal signing", "signing", make_pkcs12("legal", "pw"), "l.p12", "pw")
    with app.app_context():
        keystore_id = db.session.scalar(select(Keystore.id))
    response = _post(
        client, FULL, _full_fields(signing_keystore_id=str(keystore_id), signing_alias="nope")
    )
    assert "The keystore Legal signing has no key with the alias “nope”; its keys are: legal." in (
        response.get_data(as_text=True)
    )
    response = _post(
        client,
        FULL,
        _full_fields(
            provider="office365",
            sender_protocol="graph",
            graph_sender_upn="support@contoso.example",
            signing_keystore_id=str(keystore_id),
        ),
    )
    # Refused for the missing OAuth profile only: Graph sends the message Casemail signed as it
    # is (sendMail with MIME content), so the signing keystore stands.
    body = response.get_data(as_text=True)
    assert "Choose the OAuth 2.0 profile to get tokens from." in body
    assert 'class="form-select" id="signing_keystore_id"' in body
    response = _post(
        client, FULL, _full_fields(signing_keystore_id=str(keystore_id), signing_alias="legal")
    )
    assert response.status_code == 302
    with app.app_context():
        account = db.session.scalar(select(EmailAccount))
        assert account.signing_keystore.name == "Legal signing"


def test_a_keystore_in_use_cannot_be_deleted(
    app, client, login_as, make_account, test_ca_truststore
):
    make_account("desk", smtp_truststore_id=test_ca_truststore)
    login_as("admin")
    path = f"/admin/keystores/{test_ca_truststore}"
    token = csrf_token(client, path)
    response = client.post(path + "/delete", data={"csrf_token": token}, follow_redirects=True)
    assert "The accounts desk use this keystore; change them first." in response.get_data(
        as_text=True
    )


def test_a_truststore_used_by_an_oauth_profile_cannot_be_deleted(
    app, client, login_as, test_ca_truststore
):
    with app.app_context():
        save_profile(
            None,
            {
                "name": "Contoso Graph",
                "grant": "client_credentials",
                "authority": "https://login.microsoftonline.com/contoso",
                "graph_url": "https://graph.microsoft.com",
                "client_id": "app-1",
                "truststore_id": test_ca_truststore,
            },
            {"client_secret": "s3cret"},
        )
        db.session.commit()
    login_as("admin")
    path = f"/admin/keystores/{test_ca_truststore}"
    token = csrf_token(client, path)
    response = client.post(path + "/delete", data={"csrf_token": token}, follow_redirects=True)
    assert response.status_code == 200
    assert (
        "The OAuth 2.0 profiles Contoso Graph use this keystore; change them first."
        in response.get_data(as_text=True)
    )
    with app.app_context():
        assert db.session.get(Keystore, test_ca_truststore) is not None
