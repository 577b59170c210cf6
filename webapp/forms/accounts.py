"""Email account and keystore forms: the quick form, the full record editor, keystore upload."""

from __future__ import annotations

from typing import Any

from flask_wtf.file import FileField, FileRequired
from wtforms import (
    BooleanField,
    EmailField,
    PasswordField,
    SelectChoice,
    SelectField,
    StringField,
    SubmitField,
    TextAreaField,
)
from wtforms.validators import DataRequired, Email, Length, NumberRange, Optional, ValidationError

from webapp.forms.base import BaseForm, IntegerField, row_select
from webapp.mail import advanced
from webapp.mail.presets import PRESETS
from webapp.models import AuthProfile, Keystore, KeystoreKind

PROVIDER_CHOICES = [SelectChoice(key, preset.label) for key, preset in PRESETS.items()]
SENDER_PROTOCOL_CHOICES = [
    SelectChoice("smtp", "SMTP"),
    SelectChoice("graph", "Microsoft Graph (Office 365 only)"),
]
RECEIVER_PROTOCOL_CHOICES = [
    SelectChoice("imap", "IMAP"),
    SelectChoice("pop3", "POP3"),
    SelectChoice("graph", "Microsoft Graph (Office 365 only)"),
]
SMTP_SECURITY_CHOICES = [
    SelectChoice("starttls", "STARTTLS (usually port 587)"),
    SelectChoice("smtps", "SMTPS (usually port 465)"),
    SelectChoice("none", "None, unsecured (usually port 25)"),
]
RECEIVER_SECURITY_CHOICES = [
    SelectChoice("ssl", "SSL/TLS (IMAP 993, POP3 995)"),
    SelectChoice("starttls", "STARTTLS (IMAP only, port 143)"),
    SelectChoice("none", "None, unsecured (IMAP 143, POP3 110)"),
]
TLS_CHOICES = [SelectChoice("1.2", "TLS 1.2"), SelectChoice("1.3", "TLS 1.3")]
SMTP_AUTH_CHOICES = [
    SelectChoice("password", "Password"),
    SelectChoice("oauth", "OAuth 2.0 profile (XOAUTH2)"),
    SelectChoice("none", "No authentication (relay by address)"),
]
RECEIVER_AUTH_CHOICES = [
    SelectChoice("password", "Password"),
    SelectChoice("oauth", "OAuth 2.0 profile (XOAUTH2, IMAP only)"),
]
GRANT_CHOICES = [
    SelectChoice("client_credentials", "Client credentials (Microsoft Graph, msal)"),
    SelectChoice("password", "Password (Microsoft, msal)"),
    SelectChoice("jwt_bearer", "JWT bearer (Google service account)"),
]
KEYSTORE_KIND_CHOICES = [SelectChoice(k.value, k.label) for k in KeystoreKind]

PORT = [Optional(), NumberRange(min=1, max=65535, message="The port is a number from 1 to 65535.")]
HOST = [Optional(), Length(max=255)]
ADDRESS = [Optional(), Email(), Length(max=320)]


def profile_choices(profiles: list[AuthProfile], blank: str) -> list[SelectChoice]:
    return [SelectChoice("", blank)] + [SelectChoice(str(p.id), p.name) for p in profiles]


def keystore_choices(keystores: list[Keystore], blank: str) -> list[SelectChoice]:
    return [SelectChoice("", blank)] + [SelectChoice(str(k.id), k.name) for k in keystores]


class _Overrides(TextAreaField):
    """key=value lines, checked against a table of supported keys; `parsed` holds the dict."""

    def __init__(self, *args: Any, supported: dict[str, advanced.AdvancedKey], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.supported = supported
        self.parsed: dict[str, str] = {}

    def pre_validate(self, form: Any) -> None:
        try:
            self.parsed = advanced.parse_overrides(self.data or "", self.supported)
        except advanced.AdvancedError as exc:
            raise ValidationError(str(exc)) from None


class AccountForm(BaseForm):
    """The full record editor: every field of an email account."""

    account_id = StringField(
        "Account ID",
        validators=[DataRequired(), Length(max=64)],
        description="A short unique key used by listeners and the command line, e.g. support.",
    )
    name = StringField("Account name", validators=[DataRequired(), Length(max=200)])
    description = TextAreaField("Short description", validators=[Optional(), Length(max=2000)])
    provider = SelectField("Email provider", choices=PROVIDER_CHOICES, default="other")

    sender_protocol = SelectField("Send using", choices=SENDER_PROTOCOL_CHOICES, default="smtp")
    smtp_email = EmailField("Email address", validators=ADDRESS)
    smtp_display_name = StringField("Display name", validators=[Optional(), Length(max=200)])
    smtp_user_id = StringField("User ID", validators=[Optional(), Length(max=320)])
    smtp_password = PasswordField(
        "Password",
        validators=[Optional(), Length(max=1000)],
        description="Leave empty to keep the stored password.",
    )
    smtp_reply_to = EmailField("Reply-to address", validators=ADDRESS)
    smtp_host = StringField("Host", validators=HOST, description="Host name or IP address.")
    smtp_port = IntegerField(
        "Port", validators=PORT, description="25 unsecured, 587 STARTTLS, 465 SMTPS."
    )
    smtp_security = SelectField(
        "Use secure connection", choices=SMTP_SECURITY_CHOICES, default="starttls"
    )
    smtp_tls_min = SelectField("Lowest allowable TLS version", choices=TLS_CHOICES, default="1.2")
    smtp_truststore_id = row_select("Truststore", choose="a truststore")
    smtp_auth = SelectField("Authenticate using", choices=SMTP_AUTH_CHOICES, default="password")
    sender_auth_profile_id = row_select(
        "OAuth 2.0 profile",
        choose="an OAuth 2.0 profile",
        description="For XOAUTH2 and for sending with Microsoft Graph.",
    )
    signing_keystore_id = row_select("Signing keystore", choose="a keystore")
    signing_alias = StringField(
        "Signing alias",
        validators=[Optional(), Length(max=200)],
        description="Blank uses the first key in the keystore.",
    )
    smtp_advanced = _Overrides(
        "Advanced settings",
        supported=advanced.SENDER_KEYS,
        description="One key=value a line, e.g. mail.smtp.timeout=10000. "
        "The supported keys are listed in the documentation of email accounts.",
    )
    graph_sender_upn = StringField("User principal name", validators=[Optional(), Length(max=320)])
    graph_sender_reply_to = EmailField("Reply-to address (Graph)", validators=ADDRESS)
    graph_sender_timeout = IntegerField(
        "Timeout (seconds)",
        validators=[Optional(), NumberRange(min=1, max=600, message="From 1 to 600 seconds.")],
    )

    receiver_protocol = SelectField(
        "Receive using", choices=RECEIVER_PROTOCOL_CHOICES, default="imap"
    )
    receiver_auth = SelectField(
        "Receiver authenticate using", choices=RECEIVER_AUTH_CHOICES, default="password"
    )
    receiver_use_sender_credentials = BooleanField("Use sender's ID and password", default=True)
    receiver_user_id = StringField("Receiver user ID", validators=[Optional(), Length(max=320)])
    receiver_password = PasswordField(
        "Receiver password",
        validators=[Optional(), Length(max=1000)],
        description="Leave empty to keep the stored password.",
    )
    receiver_host = StringField("Receiver host", validators=HOST)
    receiver_port = IntegerField(
        "Receiver port", validators=PORT, description="IMAP 143 / 993, POP3 110 / 995."
    )
    receiver_security = SelectField("Use SSL/TLS", choices=RECEIVER_SECURITY_CHOICES, default="ssl")
    receiver_tls_min = SelectField(
        "Receiver lowest allowable TLS version", choices=TLS_CHOICES, default="1.2"
    )
    receiver_truststore_id = row_select("Receiver truststore", choose="a truststore")
    receiver_advanced = _Overrides(
        "Receiver advanced settings",
        supported=advanced.RECEIVER_KEYS,
        description="One key=value a line, e.g. mail.imap.timeout=10000.",
    )
    graph_receiver_upn = StringField(
        "Mailbox user principal name", validators=[Optional(), Length(max=320)]
    )
    receiver_auth_profile_id = row_select(
        "Receiver OAuth 2.0 profile",
        choose="an OAuth 2.0 profile",
        description="For XOAUTH2 and for receiving with Microsoft Graph.",
    )
    require_authenticated_replies = BooleanField(
        "Decisions by email must pass DKIM or a trusted Authentication-Results header",
        description="A reply that approves or rejects is applied only when it proves its "
        "sender's domain. Approvers can still decide with the links in the request.",
    )
    trusted_authserv_ids = StringField(
        "Trusted authserv-ids",
        validators=[Optional(), Length(max=500)],
        description="Comma-separated host names of your receiving mail servers whose "
        "Authentication-Results headers count, e.g. mx.example.com.",
    )
    submit = SubmitField("Save account")

    def set_profiles(self, profiles: list[AuthProfile]) -> None:
        choices = profile_choices(profiles, "None")
        self.sender_auth_profile_id.choices = choices
        self.receiver_auth_profile_id.choices = choices

    def set_keystores(self, truststores: list[Keystore], signing: list[Keystore]) -> None:
        trust = keystore_choices(truststores, "System truststore")
        self.smtp_truststore_id.choices = trust
        self.receiver_truststore_id.choices = trust
        self.signing_keystore_id.choices = keystore_choices(signing, "Do not sign")

    def values(self) -> dict[str, Any]:
        """The submitted account fields (without account ID and passwords) for save_account."""
        skip = {"account_id", "smtp_password", "receiver_password", "submit", "csrf_token"}
        result: dict[str, Any] = {
            name: field.data for name, field in self._fields.items() if name not in skip
        }
        for name in ("description", "smtp_display_name", "signing_alias"):
            result[name] = result[name] or ""
        for name, field in self._fields.items():
            if isinstance(field, StringField) and name not in skip and result[name] is None:
                result[name] = ""
        result["smtp_advanced"] = self.smtp_advanced.parsed
        result["receiver_advanced"] = self.receiver_advanced.parsed
        return result

    def passwords(self) -> dict[str, str | None]:
        return {
            "smtp_password": self.smtp_password.data or None,
            "receiver_password": self.receiver_password.data or None,
        }


class QuickAccountForm(BaseForm):
    """One page for business users: identity and the servers the provider preset fills in."""

    account_id = AccountForm.account_id
    name = AccountForm.name
    provider = AccountForm.provider
    email = EmailField("Email address", validators=[DataRequired(), Email(), Length(max=320)])
    password = PasswordField("Password", validators=[Optional(), Length(max=1000)])
    auth_profile_id = row_select(
        "or OAuth 2.0 profile",
        choose="an OAuth 2.0 profile",
        description="Instead of a password: tokens from this profile (XOAUTH2).",
    )
    smtp_host = StringField("SMTP host", validators=HOST)
    smtp_port = IntegerField(
        "SMTP port", validators=PORT, description="25 unsecured, 587 STARTTLS, 465 SMTPS."
    )
    smtp_security = SelectField("SMTP security", choices=SMTP_SECURITY_CHOICES, default="starttls")
    receiver_protocol = SelectField(
        "Receive using", choices=RECEIVER_PROTOCOL_CHOICES[:2], default="imap"
    )
    receiver_host = StringField("Receiver host", validators=HOST)
    receiver_port = IntegerField(
        "Receiver port", validators=PORT, description="IMAP 143 / 993, POP3 110 / 995."
    )
    receiver_security = SelectField(
        "Receiver security", choices=RECEIVER_SECURITY_CHOICES, default="ssl"
    )
    submit = SubmitField("Create account")

    def set_profiles(self, profiles: list[AuthProfile]) -> None:
        self.auth_profile_id.choices = profile_choices(profiles, "None (use the password)")

    def values(self) -> dict[str, Any]:
        email = self.email.data or ""
        profile = self.auth_profile_id.data
        oauth = {
            "smtp_auth": "oauth",
            "sender_auth_profile_id": profile,
            "receiver_auth": "oauth",
            "receiver_auth_profile_id": profile,
            "receiver_use_sender_credentials": False,
            "receiver_user_id": email,
        }
        return {
            "name": self.name.data or "",
            "provider": self.provider.data,
            "sender_protocol": "smtp",
            "smtp_email": email,
            "smtp_user_id": email,
            "smtp_auth": "password",
            "smtp_host": self.smtp_host.data or "",
            "smtp_port": self.smtp_port.data,
            "smtp_security": self.smtp_security.data,
            "receiver_protocol": self.receiver_protocol.data,
            "receiver_use_sender_credentials": True,
            "receiver_host": self.receiver_host.data or "",
            "receiver_port": self.receiver_port.data,
            "receiver_security": self.receiver_security.data,
            **(oauth if profile is not None else {}),
        }


class KeystoreForm(BaseForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=100)])
    kind = SelectField("Kind", choices=KEYSTORE_KIND_CHOICES, default=KeystoreKind.TRUSTSTORE.value)
    file = FileField(
        "File",
        validators=[FileRequired("Choose the file to upload.")],
        description="A PEM CA bundle for a truststore; a PKCS#12 (.p12, .pfx) file for signing.",
    )
    password = PasswordField(
        "Keystore password",
        validators=[Optional(), Length(max=1000)],
        description="Only for a PKCS#12 file.",
    )
    submit = SubmitField("Upload keystore")


class AuthProfileForm(BaseForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=100)])
    grant = SelectField("Grant", choices=GRANT_CHOICES, default="client_credentials")
    authority = StringField(
        "Authority / token URL",
        validators=[DataRequired(), Length(max=500)],
        default="https://login.microsoftonline.com/",
        description="Microsoft: https://login.microsoftonline.com/TENANT (or a sovereign cloud). "
        "Google: https://oauth2.googleapis.com/token.",
    )
    graph_url = StringField(
        "Graph endpoint",
        validators=[Optional(), Length(max=500)],
        default="https://graph.microsoft.com",
    )
    client_id = StringField("Application (client) ID", validators=[Optional(), Length(max=200)])
    client_secret = PasswordField(
        "Client secret",
        validators=[Optional(), Length(max=2000)],
        description="Leave empty to keep the stored secret.",
    )
    scopes = StringField(
        "Scopes",
        validators=[Optional(), Length(max=1000)],
        description="Space-separated; blank uses https://graph.microsoft.com/.default "
        "(Microsoft) or https://mail.google.com/ (Google).",
    )
    username = StringField("User name (password grant)", validators=[Optional(), Length(max=320)])
    password = PasswordField(
        "Password (password grant)",
        validators=[Optional(), Length(max=1000)],
        description="Leave empty to keep the stored password.",
    )
    service_account_key = TextAreaField(
        "Service account key (JSON)",
        validators=[Optional(), Length(max=20000)],
        description="Paste the key file of the Google service account; leave empty to keep "
        "the stored key.",
    )
    impersonate = StringField("User to impersonate", validators=[Optional(), Length(max=320)])
    truststore_id = row_select(
        "Truststore",
        choose="a truststore",
        description="CAs trusted for the authority's HTTPS; blank uses the public CAs bundled "
        "with Casemail.",
    )
    submit = SubmitField("Save profile")

    def values(self) -> dict[str, Any]:
        names = ("name", "grant", "authority", "graph_url", "client_id", "scopes", "username")
        result: dict[str, Any] = {name: self[name].data or "" for name in names}
        result["impersonate"] = self.impersonate.data or ""
        result["truststore_id"] = self.truststore_id.data
        return result

    def secrets(self) -> dict[str, str | None]:
        return {
            "client_secret": self.client_secret.data or None,
            "password": self.password.data or None,
            "service_account_key": self.service_account_key.data or None,
        }
