"""OAuth 2.0 authentication profiles: saving with validation, and tokens for mail connections."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from webapp.extensions import db
from webapp.mail.hostpolicy import HostRefused, check_host
from webapp.mail.oauth import GRANTS, OAuthError, OAuthSettings, Token, fetch_token
from webapp.models import AuthProfile, EmailAccount, Keystore, KeystoreKind
from webapp.secretbox import SecretError, get_secretbox
from webapp.services.mail_settings import host_policy

DEFAULT_SCOPES = {
    "client_credentials": "https://graph.microsoft.com/.default",
    "password": "https://graph.microsoft.com/.default",
    "jwt_bearer": "https://mail.google.com/",
}
_FIELDS = (
    "name",
    "grant",
    "authority",
    "graph_url",
    "client_id",
    "scopes",
    "username",
    "impersonate",
    "truststore_id",
)


class AuthProfileError(ValueError):
    """Saving a profile was refused; `errors` maps each field to a sentence fit to show."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__(next(iter(self.errors.values())))


def _check_url(errors: dict[str, str], field: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        errors[field] = "Enter an https:// URL."
        return
    try:
        check_host(parts.hostname, host_policy())
    except HostRefused as exc:
        errors[field] = str(exc)


def _check_service_account(text: str) -> str | None:
    try:
        info = json.loads(text)
        key = serialization.load_pem_private_key(info["private_key"].encode(), None)
        if not info.get("client_email"):
            raise KeyError("client_email")
    except (ValueError, KeyError, TypeError, AttributeError):
        return (
            "Paste the service account's JSON key file as downloaded from Google (with "
            "client_email and private_key)."
        )
    if not isinstance(key, rsa.RSAPrivateKey):
        return "The service account's key must be an RSA key."
    return None


# The secrets each grant signs in with; saving a profile drops the ones its grant does not use.
_GRANT_SECRETS = {
    "client_credentials": ("client_secret",),
    "password": ("client_secret", "password"),
    "jwt_bearer": ("service_account_key",),
}
_SECRET_ATTRIBUTES = {
    "client_secret": "client_secret_encrypted",
    "password": "password_encrypted",
    "service_account_key": "service_account_key_encrypted",
}


def profile_errors(
    profile: AuthProfile | None, values: Mapping[str, Any], secrets: Mapping[str, str | None]
) -> dict[str, str]:
    """What save_profile would refuse, a sentence per field; empty when it would save."""
    errors: dict[str, str] = {}
    name = (values.get("name") or "").strip()
    existing = db.session.scalar(select(AuthProfile).where(AuthProfile.name == name))
    if not name:
        errors["name"] = "Enter a name."
    elif existing is not None and existing is not profile:
        errors["name"] = f"An OAuth 2.0 profile named {name} already exists."
    grant = values.get("grant")
    if grant not in GRANTS:
        errors["grant"] = "Choose a grant."
    _check_url(errors, "authority", values.get("authority") or "")
    if grant != "jwt_bearer":
        _check_url(errors, "graph_url", values.get("graph_url") or "")

    def stored(attribute: str) -> bool:
        return profile is not None and bool(getattr(profile, attribute))

    if grant in ("client_credentials", "password"):
        if not values.get("client_id"):
            errors["client_id"] = "Enter the application (client) ID."
        if not secrets.get("client_secret") and not stored("client_secret_encrypted"):
            errors["client_secret"] = "Enter the client secret."  # noqa: S105 - a message
    if grant == "password":
        if not values.get("username"):
            errors["username"] = "Enter the user name to sign in as."
        if not secrets.get("password") and not stored("password_encrypted"):
            errors["password"] = "Enter the password."  # noqa: S105 - a message
    if grant == "jwt_bearer":
        key = secrets.get("service_account_key")
        if key:
            problem = _check_service_account(key)
            if problem:
                errors["service_account_key"] = problem
        elif not stored("service_account_key_encrypted"):
            errors["service_account_key"] = "Paste the service account's JSON key."
        if not values.get("impersonate"):
            errors["impersonate"] = "Enter the user to impersonate (the mailbox address)."
    truststore_id = values.get("truststore_id")
    if truststore_id is not None:
        keystore = db.session.get(Keystore, truststore_id)
        if keystore is None or keystore.kind != KeystoreKind.TRUSTSTORE:
            errors["truststore_id"] = "Choose a truststore from the list."
    return errors


def save_profile(
    profile: AuthProfile | None, values: Mapping[str, Any], secrets: Mapping[str, str | None]
) -> AuthProfile:
    """Create or update a profile; `secrets` holds client_secret, password, service_account_key
    (blank keeps the stored one). Raises AuthProfileError; nothing is changed then."""
    errors = profile_errors(profile, values, secrets)
    if errors:
        raise AuthProfileError(errors)
    values = dict(values)
    grant = str(values["grant"])
    if not values.get("scopes"):
        values["scopes"] = DEFAULT_SCOPES[grant]
    if profile is None:
        profile = AuthProfile()
        db.session.add(profile)
    for field in _FIELDS:
        value = values.get(field)
        setattr(profile, field, value if value is not None or field == "truststore_id" else "")
    profile.name = (values.get("name") or "").strip()
    box = get_secretbox()
    for field, attribute in _SECRET_ATTRIBUTES.items():
        if field not in _GRANT_SECRETS[grant]:
            setattr(profile, attribute, None)
        elif secrets.get(field):
            setattr(profile, attribute, box.encrypt(secrets[field] or ""))
    db.session.flush()
    return profile


def list_profiles() -> list[AuthProfile]:
    return list(db.session.scalars(select(AuthProfile).order_by(AuthProfile.name)))


def oauth_settings(profile: AuthProfile) -> OAuthSettings:
    """The profile with its secrets decrypted, for the protocol code."""
    box = get_secretbox()

    def secret(token: str | None) -> str:
        return box.decrypt(token) if token else ""

    return OAuthSettings(
        grant=profile.grant,
        authority=profile.authority,
        client_id=profile.client_id,
        client_secret=secret(profile.client_secret_encrypted),
        scopes=tuple(profile.scopes.split()),
        username=profile.username,
        password=secret(profile.password_encrypted),
        service_account_json=secret(profile.service_account_key_encrypted),
        subject=profile.impersonate,
        ca_bundle_pem=profile.truststore.certificates_pem if profile.truststore else None,
    )


def profile_token(profile: AuthProfile) -> Token:
    """An access token for the profile (cached). Raises OAuthError."""
    try:
        settings = oauth_settings(profile)
    except SecretError:
        raise OAuthError(
            f"A stored secret of the OAuth 2.0 profile {profile.name} cannot be decrypted with "
            "the keys in CASEMAIL_SECRET_KEYS: put the removed key back, or enter it again."
        ) from None
    return fetch_token(settings, host_policy())


def delete_profile(profile: AuthProfile) -> None:
    """Remove a profile; raises AuthProfileError while an account uses it."""
    users = db.session.scalars(
        select(EmailAccount.account_id).where(
            (EmailAccount.sender_auth_profile_id == profile.id)
            | (EmailAccount.receiver_auth_profile_id == profile.id)
        )
    ).all()
    if users:
        raise AuthProfileError(
            {"name": f"The accounts {', '.join(users)} use this profile; change them first."}
        )
    db.session.delete(profile)
    db.session.flush()
