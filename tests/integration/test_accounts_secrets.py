"""Secrets stay encrypted at rest, rotate under a new key, and `flask accounts test` reports."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from tests.fixtures.app import csrf_token
from tests.integration.test_keystores import make_pkcs12
from webapp.extensions import db
from webapp.models import EmailAccount
from webapp.secretbox import get_secretbox
from webapp.services.auth_profiles import save_profile
from webapp.services.keystores import create_keystore

SMTP_SECRET = "smtp-plaintext-secret-7731"
IMAP_SECRET = "imap-plaintext-secret-9034"
P12_SECRET = "p12-plaintext-secret-5512"


def _database_bytes(app) -> bytes:
    path = Path(app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"))
    with app.app_context():
        db.engine.dispose()  # let SQLite check the WAL into the main file
    data = path.read_bytes()
    wal = path.with_name(path.name + "-wal")
    return data + (wal.read_bytes() if wal.exists() else b"")


def _use_keys(app, keys: list[str]) -> None:
    app.config["CASEMAIL_SECRET_KEYS"] = keys
    app.extensions.pop("casemail.secretbox", None)


def test_no_secret_is_stored_in_plaintext(app, make_account):
    make_account("desk", smtp_password=SMTP_SECRET, receiver_password=IMAP_SECRET)
    with app.app_context():
        create_keystore("Signing", "signing", "s.p12", make_pkcs12("s", P12_SECRET), P12_SECRET)
        db.session.commit()
    stored = _database_bytes(app)
    assert b"desk" in stored  # the file read is the right one
    for secret in (SMTP_SECRET, IMAP_SECRET, P12_SECRET):
        assert secret.encode() not in stored


def test_rotation_keeps_every_account_working(app, runner, make_account, smtp_server):
    server = smtp_server(auth={"support@example.com": SMTP_SECRET})
    make_account("desk", smtp_password=SMTP_SECRET, smtp_port=server.port)
    with app.app_context():
        create_keystore("Signing", "signing", "s.p12", make_pkcs12("s", P12_SECRET), P12_SECRET)
        db.session.commit()
    old_keys = list(app.config["CASEMAIL_SECRET_KEYS"])
    new_key = Fernet.generate_key().decode()
    _use_keys(app, [new_key, *old_keys])
    # Still readable before the rotation: the old key decrypts.
    assert runner.invoke(args=["accounts", "test", "desk", "--sender"]).exit_code == 0

    result = runner.invoke(args=["secrets", "rotate"])
    assert result.exit_code == 0, result.output
    assert "Re-encrypted 4 stored secret(s) under the newest key." in result.output

    _use_keys(app, [new_key])  # the old key is gone: everything must be under the new one
    result = runner.invoke(args=["accounts", "test", "desk", "--sender"])
    assert result.exit_code == 0, result.output
    assert "as support@example.com" in result.output


def test_rotation_without_the_old_key_changes_nothing(app, runner, make_account):
    make_account("desk", smtp_password=SMTP_SECRET)
    _use_keys(app, [Fernet.generate_key().decode()])
    result = runner.invoke(args=["secrets", "rotate"])
    assert result.exit_code == 1
    assert "Nothing was changed" in result.output


def test_accounts_test_command_reports_and_fails_with_exit_1(app, runner, make_account):
    make_account("desk", smtp_host="mail.example.invalid", receiver_host="imap.example.invalid")
    result = runner.invoke(args=["accounts", "test", "desk"])
    assert result.exit_code == 1
    assert (
        "Sender: FAILED DNS name not found: mail.example.invalid does not resolve to an address."
        in result.output
    )
    assert "Receiver: FAILED DNS name not found: imap.example.invalid" in result.output
    result = runner.invoke(args=["accounts", "test", "nope"])
    assert result.exit_code == 1
    assert "There is no email account with the ID nope." in result.output


def test_a_secret_no_key_decrypts_fails_the_test_with_a_sentence(
    app, client, login_as, make_account
):
    pk = make_account("desk", smtp_password=SMTP_SECRET)
    _use_keys(app, [Fernet.generate_key().decode()])
    login_as("admin")
    path = f"/admin/accounts/{pk}"
    token = csrf_token(client, path)
    response = client.post(f"{path}/test/sender", data={"csrf_token": token}, follow_redirects=True)
    assert response.status_code == 200
    assert (
        "A stored secret of this account cannot be decrypted with the keys in "
        "CASEMAIL_SECRET_KEYS: put the removed key back, or enter the password again."
    ) in response.get_data(as_text=True)


def test_a_profile_secret_no_key_decrypts_is_one_sentence(app, client, login_as):
    with app.app_context():
        profile = save_profile(
            None,
            {
                "name": "Contoso Graph",
                "grant": "client_credentials",
                "authority": "https://login.microsoftonline.com/contoso",
                "graph_url": "https://graph.microsoft.com",
                "client_id": "app-1",
                "truststore_id": None,
            },
            {"client_secret": "s3cret"},
        )
        db.session.commit()
        pk = profile.id
    _use_keys(app, [Fernet.generate_key().decode()])
    login_as("admin")
    token = csrf_token(client, "/admin/auth-profiles")
    response = client.post(
        f"/admin/auth-profiles/{pk}/token", data={"csrf_token": token}, follow_redirects=True
    )
    assert response.status_code == 200
    assert (
        "A stored secret of the OAuth 2.0 profile Contoso Graph cannot be decrypted"
        in response.get_data(as_text=True)
    )


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_rotation_keeps_a_password_saved_while_it_runs(app, runner, make_account):
    pk = make_account("desk", smtp_password=SMTP_SECRET)
    _use_keys(app, [Fernet.generate_key().decode(), *app.config["CASEMAIL_SECRET_KEYS"]])
    outcome = []
    with app.app_context():
        changed = get_secretbox().encrypt("changed while rotating")
        # An admin's save, not yet committed when the rotation starts.
        with db.engine.connect() as editor:
            editor.execute(
                text("UPDATE email_accounts SET smtp_password_encrypted = :token WHERE id = :pk"),
                {"token": changed, "pk": pk},
            )
            rotation = threading.Thread(
                target=lambda: outcome.append(runner.invoke(args=["secrets", "rotate"]))
            )
            rotation.start()
            time.sleep(0.5)
            editor.commit()
        rotation.join(timeout=10)
    assert outcome and outcome[0].exit_code == 0, outcome
    with app.app_context():
        account = db.session.get(EmailAccount, pk)
        assert get_secretbox().decrypt(account.smtp_password_encrypted) == "changed while rotating"
