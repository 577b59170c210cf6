"""Email accounts: saving with validation, secrets, and Test connectivity."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select

from webapp.extensions import db
from webapp.mail import advanced
from webapp.mail.authres import is_hostname
from webapp.mail.connect import SYSTEM_TRUSTSTORE, ConnectivityError, Endpoint
from webapp.mail.graph import GraphError, check_mailbox
from webapp.mail.hostpolicy import HostPolicy, HostRefused, check_host
from webapp.mail.imap import MailboxLogin, check_imap
from webapp.mail.oauth import OAuthError, check_url
from webapp.mail.pop3 import check_pop3
from webapp.mail.presets import OFFICE365, PRESETS
from webapp.mail.smtp import SmtpLogin, check_smtp
from webapp.mail.tls import TLS_VERSIONS
from webapp.models import AuthProfile, EmailAccount, EmailListener, Keystore, KeystoreKind
from webapp.models.types import utcnow
from webapp.secretbox import SecretError, get_secretbox
from webapp.services.auth_profiles import oauth_settings, profile_token
from webapp.services.mail_settings import host_policy
from webapp.services.text import still_used
from webapp.services.turns import hold_row

ACCOUNT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SENDER_PROTOCOLS = ("smtp", "graph")
RECEIVER_PROTOCOLS = ("imap", "pop3", "graph")
SMTP_SECURITY = ("none", "starttls", "smtps")
RECEIVER_SECURITY = {"imap": ("ssl", "starttls", "none"), "pop3": ("ssl", "none")}
SMTP_AUTH = ("password", "oauth", "none")
RECEIVER_AUTH = ("password", "oauth")
# Test connectivity runs while a page or a terminal waits: no step waits longer than this,
# whatever longer timeouts the account sets for its listeners and senders.
TEST_TIMEOUT = 30.0
UNDECRYPTABLE = (
    "A stored secret of this account cannot be decrypted with the keys in "
    "CASEMAIL_SECRET_KEYS: put the removed key back, or enter the password again."
)

# The attributes save_account copies from the submitted values as they are.
_PLAIN_FIELDS = (
    "name",
    "description",
    "provider",
    "sender_protocol",
    "smtp_email",
    "smtp_display_name",
    "smtp_user_id",
    "smtp_reply_to",
    "smtp_host",
    "smtp_port",
    "smtp_security",
    "smtp_tls_min",
    "smtp_truststore_id",
    "smtp_auth",
    "sender_auth_profile_id",
    "signing_keystore_id",
    "signing_alias",
    "smtp_advanced",
    "graph_sender_upn",
    "graph_sender_reply_to",
    "graph_sender_timeout",
    "receiver_protocol",
    "receiver_use_sender_credentials",
    "receiver_auth",
    "receiver_auth_profile_id",
    "receiver_user_id",
    "receiver_host",
    "receiver_port",
    "receiver_security",
    "receiver_tls_min",
    "receiver_truststore_id",
    "receiver_advanced",
    "graph_receiver_upn",
    "require_authenticated_replies",
    "trusted_authserv_ids",
)


class AccountError(ValueError):
    """Saving an account was refused; `errors` maps each field to a sentence fit to show."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__(next(iter(self.errors.values())))


@dataclass(frozen=True)
class ConnectivityResult:
    ok: bool
    message: str


def find_account(account_id: str) -> EmailAccount | None:
    return db.session.scalar(select(EmailAccount).where(EmailAccount.account_id == account_id))


def new_account() -> EmailAccount:
    """An unsaved account holding the defaults the forms start from."""
    return EmailAccount(
        provider="other",
        sender_protocol="smtp",
        smtp_security="starttls",
        smtp_tls_min="1.2",
        smtp_auth="password",
        smtp_advanced={},
        receiver_auth="password",
        receiver_protocol="imap",
        receiver_use_sender_credentials=True,
        receiver_security="ssl",
        receiver_tls_min="1.2",
        receiver_advanced={},
        require_authenticated_replies=False,
        trusted_authserv_ids="",
    )


def apply_preset(values: dict[str, Any]) -> None:
    """Fill empty host, port and security fields from the chosen provider's preset."""
    preset = PRESETS.get(values.get("provider") or "")
    if preset is None:
        return
    if preset.smtp and not values.get("smtp_host"):
        values["smtp_host"] = preset.smtp.host
        values["smtp_port"] = preset.smtp.port
        values["smtp_security"] = preset.smtp.security
    server = preset.pop3 if values.get("receiver_protocol") == "pop3" else preset.imap
    if server and not values.get("receiver_host"):
        values["receiver_host"] = server.host
        values["receiver_port"] = server.port
        values["receiver_security"] = server.security


def _check_port(errors: dict[str, str], field: str, port: Any) -> None:
    if port is None or port == "":
        errors[field] = "Enter the port."
    elif not isinstance(port, int) or not 1 <= port <= 65535:
        errors[field] = "The port is a number from 1 to 65535."


def _check_host(errors: dict[str, str], field: str, host: str, policy: HostPolicy) -> None:
    if not host:
        errors[field] = "Enter the server's host name or IP address."
        return
    try:
        check_host(host, policy)
    except HostRefused as exc:
        errors[field] = str(exc)


def _keystore(keystore_id: int | None, kind: KeystoreKind) -> Keystore | None:
    if keystore_id is None:
        return None
    keystore = db.session.get(Keystore, keystore_id)
    if keystore is None or keystore.kind != kind:
        return None
    return keystore


def _validate(
    account: EmailAccount, values: Mapping[str, Any], passwords: Mapping[str, str | None]
) -> dict[str, str]:
    errors: dict[str, str] = {}
    try:
        policy = host_policy()
    except HostRefused as exc:
        return {"smtp_host": str(exc)}
    if values["provider"] not in PRESETS:
        errors["provider"] = "Choose an email provider (or Other)."
    office365 = values["provider"] == OFFICE365
    if values["sender_protocol"] not in SENDER_PROTOCOLS:
        errors["sender_protocol"] = "Choose SMTP or Microsoft Graph."
    elif values["sender_protocol"] == "graph" and not office365:
        errors["sender_protocol"] = (
            "Microsoft Graph can send only for the provider Microsoft Office 365."
        )
    if values["receiver_protocol"] not in RECEIVER_PROTOCOLS:
        errors["receiver_protocol"] = "Choose IMAP, POP3 or Microsoft Graph."
    elif values["receiver_protocol"] == "graph" and not office365:
        errors["receiver_protocol"] = (
            "Microsoft Graph can receive only for the provider Microsoft Office 365."
        )

    if values["sender_protocol"] == "smtp":
        if not values["smtp_email"]:
            errors["smtp_email"] = "Enter the email address messages are sent from."
        _check_host(errors, "smtp_host", values["smtp_host"], policy)
        _check_port(errors, "smtp_port", values["smtp_port"])
        if values["smtp_security"] not in SMTP_SECURITY:
            errors["smtp_security"] = "Choose none, STARTTLS or SMTPS."
        if values["smtp_tls_min"] not in TLS_VERSIONS:
            errors["smtp_tls_min"] = "Choose TLS 1.2 or TLS 1.3."
        if values["smtp_auth"] not in SMTP_AUTH:
            errors["smtp_auth"] = "Choose how to authenticate."
        elif values["smtp_auth"] == "password":
            if not values["smtp_user_id"]:
                errors["smtp_user_id"] = "Enter the user ID to sign in with."
            elif not passwords.get("smtp_password") and not account.smtp_password_encrypted:
                errors["smtp_password"] = "Enter the password."  # noqa: S105 - a message
        if values["smtp_truststore_id"] is not None and not _keystore(
            values["smtp_truststore_id"], KeystoreKind.TRUSTSTORE
        ):
            errors["smtp_truststore_id"] = "Choose a truststore from the list."
        if values["smtp_auth"] == "oauth":
            if not values["smtp_user_id"]:
                errors["smtp_user_id"] = "Enter the user ID (the mailbox address) for XOAUTH2."
            _check_profile(errors, "sender_auth_profile_id", values["sender_auth_profile_id"])
    elif values["sender_protocol"] == "graph":
        if not values["graph_sender_upn"]:
            errors["graph_sender_upn"] = "Enter the user principal name to send as."
        _check_profile(errors, "sender_auth_profile_id", values["sender_auth_profile_id"])

    if values["signing_keystore_id"] is not None:
        signing = _keystore(values["signing_keystore_id"], KeystoreKind.SIGNING)
        if signing is None:
            errors["signing_keystore_id"] = "Choose a signing keystore from the list."
        else:
            aliases = [e["alias"] for e in signing.entries if e.get("has_key")]
            if values["signing_alias"] and values["signing_alias"] not in aliases:
                errors["signing_alias"] = (
                    f"The keystore {signing.name} has no key with the alias "
                    f"“{values['signing_alias']}”; its keys are: {', '.join(aliases)}."
                )
    elif values["signing_alias"]:
        errors["signing_alias"] = "Choose the signing keystore this alias belongs to."

    try:
        advanced.parse_overrides(
            advanced.format_overrides(values["smtp_advanced"]), advanced.SENDER_KEYS
        )
    except advanced.AdvancedError as exc:
        errors["smtp_advanced"] = str(exc)

    protocol = values["receiver_protocol"]
    if protocol in RECEIVER_SECURITY:
        _check_host(errors, "receiver_host", values["receiver_host"], policy)
        _check_port(errors, "receiver_port", values["receiver_port"])
        if values["receiver_security"] not in RECEIVER_SECURITY[protocol]:
            errors["receiver_security"] = (
                "Choose SSL/TLS or no encryption (POP3 has no STARTTLS here)."
                if protocol == "pop3"
                else "Choose SSL/TLS, STARTTLS or no encryption."
            )
        if values["receiver_tls_min"] not in TLS_VERSIONS:
            errors["receiver_tls_min"] = "Choose TLS 1.2 or TLS 1.3."
        if values["receiver_auth"] not in RECEIVER_AUTH:
            errors["receiver_auth"] = "Choose how to authenticate."
        elif values["receiver_auth"] == "oauth":
            if protocol != "imap":
                errors["receiver_auth"] = "OAuth 2.0 (XOAUTH2) sign-in is available for IMAP only."
            elif not values["receiver_user_id"]:
                errors["receiver_user_id"] = "Enter the user ID (the mailbox address) for XOAUTH2."
            _check_profile(errors, "receiver_auth_profile_id", values["receiver_auth_profile_id"])
        elif values["receiver_use_sender_credentials"]:
            if values["sender_protocol"] != "smtp" or values["smtp_auth"] != "password":
                errors["receiver_use_sender_credentials"] = (
                    "The sender has no user ID and password to share; enter the receiver's own."
                )
        elif not values["receiver_user_id"]:
            errors["receiver_user_id"] = "Enter the user ID to sign in with."
        elif not passwords.get("receiver_password") and not account.receiver_password_encrypted:
            errors["receiver_password"] = "Enter the password."  # noqa: S105 - a message
        if values["receiver_truststore_id"] is not None and not _keystore(
            values["receiver_truststore_id"], KeystoreKind.TRUSTSTORE
        ):
            errors["receiver_truststore_id"] = "Choose a truststore from the list."
        try:
            advanced.parse_overrides(
                advanced.format_overrides(values["receiver_advanced"]), advanced.RECEIVER_KEYS
            )
        except advanced.AdvancedError as exc:
            errors["receiver_advanced"] = str(exc)
    elif protocol == "graph":
        if not values["graph_receiver_upn"]:
            errors["graph_receiver_upn"] = "Enter the user principal name of the mailbox."
        _check_profile(errors, "receiver_auth_profile_id", values["receiver_auth_profile_id"])
    try:
        authserv_ids(values["trusted_authserv_ids"] or "")
    except ValueError as exc:
        errors["trusted_authserv_ids"] = str(exc)
    return errors


def authserv_ids(text: str) -> list[str]:
    """The host names of a comma-separated list of authserv-ids; raises ValueError."""
    ids = [part.strip().lower().rstrip(".") for part in text.split(",") if part.strip()]
    wrong = [value for value in ids if not is_hostname(value)]
    if wrong:
        raise ValueError(
            f"“{wrong[0][:60]}” is not a host name: list the names of your receiving mail "
            "servers, separated by commas, such as mx.example.com."
        )
    if len(", ".join(ids)) > 500:
        raise ValueError("Keep the list under 500 characters.")
    return list(dict.fromkeys(ids))


def _check_profile(errors: dict[str, str], field: str, profile_id: int | None) -> None:
    if profile_id is None:
        errors[field] = "Choose the OAuth 2.0 profile to get tokens from."
    elif db.session.get(AuthProfile, profile_id) is None:
        errors[field] = "Choose an OAuth 2.0 profile from the list."


def account_errors(
    account: EmailAccount | None,
    account_id: str,
    values: Mapping[str, Any],
    passwords: Mapping[str, str | None],
) -> dict[str, str]:
    """What save_account would refuse, a sentence per field; empty when it would save."""
    merged = {**_current_values(account or new_account()), **values}
    errors: dict[str, str] = {}
    if account is None:
        if not ACCOUNT_ID_RE.match(account_id):
            errors["account_id"] = (
                "Use 1 to 64 letters, digits, dots, hyphens or underscores, starting with a "
                "letter or digit."
            )
        elif find_account(account_id) is not None:
            errors["account_id"] = f"An account with the ID {account_id} already exists."
    errors.update(_validate(account or new_account(), merged, passwords))
    return errors


def save_account(
    account: EmailAccount | None,
    account_id: str,
    values: Mapping[str, Any],
    passwords: Mapping[str, str | None],
) -> EmailAccount:
    """Create (account None) or update an account from field values.

    `passwords` holds smtp_password / receiver_password; blank keeps the stored one.
    Raises AccountError with a sentence per refused field; nothing is changed then.
    """
    errors = account_errors(account, account_id, values, passwords)
    if errors:
        raise AccountError(errors)
    merged = {**_current_values(account or new_account()), **values}
    if account is None:
        account = new_account()
        account.account_id = account_id
        db.session.add(account)
    for field in _PLAIN_FIELDS:
        setattr(account, field, merged[field])
    account.require_authenticated_replies = bool(merged["require_authenticated_replies"])
    account.trusted_authserv_ids = ", ".join(authserv_ids(merged["trusted_authserv_ids"] or ""))
    box = get_secretbox()
    if merged["smtp_auth"] != "password" or merged["sender_protocol"] != "smtp":
        account.smtp_password_encrypted = None
    elif passwords.get("smtp_password"):
        account.smtp_password_encrypted = box.encrypt(passwords["smtp_password"] or "")
    if (
        merged["receiver_use_sender_credentials"]
        or merged["receiver_protocol"] == "graph"
        or merged["receiver_auth"] == "oauth"
    ):
        account.receiver_password_encrypted = None
    elif passwords.get("receiver_password"):
        account.receiver_password_encrypted = box.encrypt(passwords["receiver_password"] or "")
    db.session.flush()
    return account


def _current_values(account: EmailAccount) -> dict[str, Any]:
    return {field: getattr(account, field) for field in _PLAIN_FIELDS}


def listeners_of(account: EmailAccount) -> list[EmailListener]:
    """The listeners that receive through `account`, by name."""
    return list(
        db.session.scalars(
            select(EmailListener)
            .where(EmailListener.account_id == account.id)
            .order_by(EmailListener.name)
        )
    )


def listeners_by_account() -> dict[int, list[EmailListener]]:
    """The listeners that receive through each account, by account id, by name."""
    found: dict[int, list[EmailListener]] = {}
    for listener in db.session.scalars(select(EmailListener).order_by(EmailListener.name)):
        found.setdefault(listener.account_id, []).append(listener)
    return found


class AccountInUse(ValueError):
    """Deleting an account was refused: listeners still receive mail through it."""


def delete_account(account: EmailAccount) -> None:
    """Delete an account no listener receives through; raises AccountInUse. Cases, messages
    and case types that name it keep their history and lose the link."""
    # A listener being saved on it right now is waited for, and named.
    hold_row(EmailAccount, account.id)
    names = [listener.name for listener in listeners_of(account)]
    if names:
        raise AccountInUse(
            still_used(
                "listener",
                names,
                ("receives", "receive"),
                "mail through this account",
                "move {them} to another account or delete {them} first",
            )
        )
    db.session.delete(account)
    db.session.flush()


# -- Test connectivity ----------------------------------------------------------------------


def _truststore(keystore: Keystore | None) -> tuple[str | None, str]:
    if keystore is None:
        return None, SYSTEM_TRUSTSTORE
    return keystore.certificates_pem, f"the truststore “{keystore.name}”"


def sender_endpoint(account: EmailAccount) -> Endpoint:
    pem, label = _truststore(account.smtp_truststore)
    overrides = account.smtp_advanced or {}
    return Endpoint(
        host=account.smtp_host,
        port=account.smtp_port or 0,
        security=account.smtp_security,
        tls_min=account.smtp_tls_min,
        truststore_pem=pem,
        truststore_label=label,
        connect_timeout=advanced.seconds(overrides, "mail.smtp.connectiontimeout", 15.0),
        read_timeout=advanced.seconds(overrides, "mail.smtp.timeout", 30.0),
    )


def receiver_endpoint(account: EmailAccount) -> Endpoint:
    pem, label = _truststore(account.receiver_truststore)
    overrides = account.receiver_advanced or {}
    prefix = "mail.pop3" if account.receiver_protocol == "pop3" else "mail.imap"
    return Endpoint(
        host=account.receiver_host,
        port=account.receiver_port or 0,
        security=account.receiver_security,
        tls_min=account.receiver_tls_min,
        truststore_pem=pem,
        truststore_label=label,
        connect_timeout=advanced.seconds(overrides, f"{prefix}.connectiontimeout", 15.0),
        read_timeout=advanced.seconds(overrides, f"{prefix}.timeout", 30.0),
    )


def _decrypt(token: str | None) -> str:
    return get_secretbox().decrypt(token) if token else ""


def _token(profile: AuthProfile | None) -> str:
    if profile is None:
        raise ConnectivityError("Choose an OAuth 2.0 profile for this account first.")
    try:
        return profile_token(profile).access_token
    except OAuthError as exc:
        raise ConnectivityError(str(exc)) from None


def smtp_login(account: EmailAccount) -> SmtpLogin | None:
    """How to sign in to the account's SMTP server (None: no sign-in); raises ConnectivityError
    when an OAuth token cannot be obtained, SecretError when a password cannot be decrypted."""
    if account.smtp_auth == "oauth":
        return SmtpLogin(user=account.smtp_user_id, oauth_token=_token(account.sender_auth_profile))
    if account.smtp_auth != "password":
        return None
    overrides = account.smtp_advanced or {}
    return SmtpLogin(
        user=account.smtp_user_id,
        password=_decrypt(account.smtp_password_encrypted),
        plain_disabled=advanced.flag(overrides, "mail.smtp.auth.plain.disable"),
        login_disabled=advanced.flag(overrides, "mail.smtp.auth.login.disable"),
    )


def _mailbox_login(account: EmailAccount) -> MailboxLogin:
    if account.receiver_auth == "oauth":
        return MailboxLogin(
            user=account.receiver_user_id, oauth_token=_token(account.receiver_auth_profile)
        )
    if account.receiver_use_sender_credentials:
        user, token = account.smtp_user_id, account.smtp_password_encrypted
    else:
        user, token = account.receiver_user_id, account.receiver_password_encrypted
    overrides = account.receiver_advanced or {}
    key = (
        "mail.imaps.auth.plain.disable"
        if account.receiver_security == "ssl"
        else "mail.imap.auth.plain.disable"
    )
    return MailboxLogin(
        user=user, password=_decrypt(token), plain_disabled=advanced.flag(overrides, key)
    )


def _for_test(endpoint: Endpoint) -> Endpoint:
    return replace(
        endpoint,
        connect_timeout=min(endpoint.connect_timeout, TEST_TIMEOUT),
        read_timeout=min(endpoint.read_timeout, TEST_TIMEOUT),
    )


def _run_sender_test(account: EmailAccount) -> str:
    if account.sender_protocol == "graph":
        return _graph_check(
            account.sender_auth_profile, account.graph_sender_upn, account.graph_sender_timeout
        )
    local = (account.smtp_advanced or {}).get("mail.smtp.localhost")
    endpoint = _for_test(sender_endpoint(account))
    return check_smtp(endpoint, smtp_login(account), host_policy(), local)


def _run_receiver_test(account: EmailAccount) -> str:
    endpoint = _for_test(receiver_endpoint(account))
    if account.receiver_protocol == "imap":
        return check_imap(endpoint, _mailbox_login(account), host_policy())
    if account.receiver_protocol == "pop3":
        return check_pop3(endpoint, _mailbox_login(account), host_policy())
    return _graph_check(account.receiver_auth_profile, account.graph_receiver_upn, None)


def _graph_check(profile: AuthProfile | None, upn: str, timeout: int | None) -> str:
    token = _token(profile)
    assert profile is not None
    policy = host_policy()
    try:
        check_url(profile.graph_url, policy)
    except OAuthError as exc:
        raise ConnectivityError(str(exc)) from None
    try:
        return check_mailbox(
            profile.graph_url,
            upn,
            token,
            oauth_settings(profile),
            policy,
            timeout=min(timeout or TEST_TIMEOUT, TEST_TIMEOUT),
        )
    except GraphError as exc:
        raise ConnectivityError(str(exc)) from None


def check_connectivity(account: EmailAccount, side: str) -> ConnectivityResult:
    """Test the sender ("sender") or receiver ("receiver") and record the result on the account."""
    run = _run_sender_test if side == "sender" else _run_receiver_test
    try:
        result = ConnectivityResult(True, run(account))
    except (ConnectivityError, HostRefused) as exc:
        result = ConnectivityResult(False, str(exc))
    except SecretError:
        result = ConnectivityResult(False, UNDECRYPTABLE)
    now = utcnow()
    if side == "sender":
        account.sender_tested_at, account.sender_test_ok = now, result.ok
        account.sender_test_message = result.message
    else:
        account.receiver_tested_at, account.receiver_test_ok = now, result.ok
        account.receiver_test_message = result.message
    db.session.flush()
    return result


def rotate_account_secrets() -> int:
    """Re-encrypt every stored secret (accounts, keystores, OAuth profiles) under the newest key.

    Returns how many were re-encrypted.

    Raises SecretError when a secret cannot be decrypted with any configured key.
    """
    box = get_secretbox()
    count = 0
    columns = {
        EmailAccount: ("smtp_password_encrypted", "receiver_password_encrypted"),
        Keystore: ("pkcs12_encrypted", "password_encrypted"),
        AuthProfile: (
            "client_secret_encrypted",
            "password_encrypted",
            "service_account_key_encrypted",
        ),
    }
    for model, names in columns.items():
        # Locked until the caller commits, so that a secret saved meanwhile is rotated as
        # saved rather than overwritten with the old one (PostgreSQL; SQLite has one writer).
        for row in db.session.scalars(select(model).with_for_update()):
            for name in names:
                token = getattr(row, name)
                if token:
                    setattr(row, name, box.rotate(token))
                    count += 1
    db.session.flush()
    return count
