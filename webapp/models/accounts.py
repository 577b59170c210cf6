"""Email accounts and the keystores they use."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webapp.extensions import Model
from webapp.models.types import UTCDateTime, utcnow


class KeystoreKind(enum.StrEnum):
    TRUSTSTORE = "truststore"
    SIGNING = "signing"

    @property
    def label(self) -> str:
        return {"truststore": "Truststore (CA bundle)", "signing": "Signing keystore (PKCS#12)"}[
            self.value
        ]


class Keystore(Model):
    """Uploaded certificates: a truststore (PEM CA bundle) or a signing keystore (PKCS#12)."""

    __tablename__ = "keystores"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    filename: Mapped[str] = mapped_column(String(255), default="")
    # Certificates only (public): the CA bundle, or the certificates inside the PKCS#12 file.
    certificates_pem: Mapped[str] = mapped_column(Text, default="")
    # The PKCS#12 file (base64) and its password, encrypted with the secret box.
    pkcs12_encrypted: Mapped[str | None] = mapped_column(Text)
    password_encrypted: Mapped[str | None] = mapped_column(Text)
    # [{alias, subject, issuer, not_after (ISO), has_key}], read once at upload.
    entries: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return f"<Keystore {self.name} ({self.kind})>"


class AuthProfile(Model):
    """An OAuth 2.0 authentication profile: client credentials, password or JWT bearer grant."""

    __tablename__ = "auth_profiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    grant: Mapped[str] = mapped_column(String(30))
    # The msal authority (https://login.microsoftonline.com/TENANT) or the token URL (Google).
    authority: Mapped[str] = mapped_column(String(500))
    graph_url: Mapped[str] = mapped_column(String(500), default="https://graph.microsoft.com")
    client_id: Mapped[str] = mapped_column(String(200), default="")
    client_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    scopes: Mapped[str] = mapped_column(String(1000), default="")
    username: Mapped[str] = mapped_column(String(320), default="")
    password_encrypted: Mapped[str | None] = mapped_column(Text)
    service_account_key_encrypted: Mapped[str | None] = mapped_column(Text)
    impersonate: Mapped[str] = mapped_column(String(320), default="")
    truststore_id: Mapped[int | None] = mapped_column(
        ForeignKey("keystores.id", ondelete="RESTRICT"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    truststore: Mapped[Keystore | None] = relationship()

    def __repr__(self) -> str:
        return f"<AuthProfile {self.name} ({self.grant})>"


class EmailAccount(Model):
    """Server and identity details for sending (SMTP, Graph) and receiving (IMAP, POP3, Graph)."""

    __tablename__ = "email_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    provider: Mapped[str] = mapped_column(String(20), default="other")

    # Sender
    sender_protocol: Mapped[str] = mapped_column(String(10), default="smtp")
    smtp_email: Mapped[str] = mapped_column(String(320), default="")
    smtp_display_name: Mapped[str] = mapped_column(String(200), default="")
    smtp_user_id: Mapped[str] = mapped_column(String(320), default="")
    smtp_password_encrypted: Mapped[str | None] = mapped_column(Text)
    smtp_reply_to: Mapped[str] = mapped_column(String(320), default="")
    smtp_host: Mapped[str] = mapped_column(String(255), default="")
    smtp_port: Mapped[int | None] = mapped_column()
    smtp_security: Mapped[str] = mapped_column(String(10), default="starttls")
    smtp_tls_min: Mapped[str] = mapped_column(String(5), default="1.2")
    smtp_truststore_id: Mapped[int | None] = mapped_column(
        ForeignKey("keystores.id", ondelete="RESTRICT"), index=True
    )
    smtp_auth: Mapped[str] = mapped_column(String(10), default="password")
    # Used by SMTP XOAUTH2 (smtp_auth "oauth") and by Microsoft Graph sending.
    sender_auth_profile_id: Mapped[int | None] = mapped_column(
        ForeignKey("auth_profiles.id", ondelete="RESTRICT"), index=True
    )
    signing_keystore_id: Mapped[int | None] = mapped_column(
        ForeignKey("keystores.id", ondelete="RESTRICT"), index=True
    )
    signing_alias: Mapped[str] = mapped_column(String(200), default="")
    smtp_advanced: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    graph_sender_upn: Mapped[str] = mapped_column(String(320), default="")
    graph_sender_reply_to: Mapped[str] = mapped_column(String(320), default="")
    graph_sender_timeout: Mapped[int | None] = mapped_column()

    # Receiver
    receiver_protocol: Mapped[str] = mapped_column(String(10), default="imap")
    receiver_use_sender_credentials: Mapped[bool] = mapped_column(default=True)
    receiver_auth: Mapped[str] = mapped_column(String(10), default="password")
    # Used by IMAP XOAUTH2 (receiver_auth "oauth") and by Microsoft Graph receiving.
    receiver_auth_profile_id: Mapped[int | None] = mapped_column(
        ForeignKey("auth_profiles.id", ondelete="RESTRICT"), index=True
    )
    receiver_user_id: Mapped[str] = mapped_column(String(320), default="")
    receiver_password_encrypted: Mapped[str | None] = mapped_column(Text)
    receiver_host: Mapped[str] = mapped_column(String(255), default="")
    receiver_port: Mapped[int | None] = mapped_column()
    receiver_security: Mapped[str] = mapped_column(String(10), default="ssl")
    receiver_tls_min: Mapped[str] = mapped_column(String(5), default="1.2")
    receiver_truststore_id: Mapped[int | None] = mapped_column(
        ForeignKey("keystores.id", ondelete="RESTRICT"), index=True
    )
    receiver_advanced: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    graph_receiver_upn: Mapped[str] = mapped_column(String(320), default="")

    # Decisions by email: whether a reply must prove its sender's domain (DKIM, or an
    # Authentication-Results header from one of the trusted authserv-ids) to be applied.
    require_authenticated_replies: Mapped[bool] = mapped_column(default=False, server_default="0")
    trusted_authserv_ids: Mapped[str] = mapped_column(String(500), default="", server_default="")

    # Last Test connectivity results
    sender_tested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sender_test_ok: Mapped[bool | None] = mapped_column()
    sender_test_message: Mapped[str] = mapped_column(Text, default="")
    receiver_tested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    receiver_test_ok: Mapped[bool | None] = mapped_column()
    receiver_test_message: Mapped[str] = mapped_column(Text, default="")

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    smtp_truststore: Mapped[Keystore | None] = relationship(foreign_keys=[smtp_truststore_id])
    receiver_truststore: Mapped[Keystore | None] = relationship(
        foreign_keys=[receiver_truststore_id]
    )
    signing_keystore: Mapped[Keystore | None] = relationship(foreign_keys=[signing_keystore_id])
    sender_auth_profile: Mapped[AuthProfile | None] = relationship(
        foreign_keys=[sender_auth_profile_id]
    )
    receiver_auth_profile: Mapped[AuthProfile | None] = relationship(
        foreign_keys=[receiver_auth_profile_id]
    )

    def __repr__(self) -> str:
        return f"<EmailAccount {self.account_id}>"
