"""Keystores: uploaded truststores (PEM CA bundles) and signing keystores (PKCS#12)."""

from __future__ import annotations

import base64

from sqlalchemy import or_, select

from webapp.extensions import db
from webapp.mail.keystore import KeystoreError, read_pkcs12, read_truststore
from webapp.models import AuthProfile, EmailAccount, Keystore, KeystoreKind
from webapp.secretbox import get_secretbox


class KeystoreRefused(ValueError):
    """A keystore operation was refused; `field` names the form field the message belongs to."""

    def __init__(self, message: str, field: str = "file") -> None:
        super().__init__(message)
        self.field = field


def create_keystore(name: str, kind: str, filename: str, data: bytes, password: str) -> Keystore:
    """Store an uploaded keystore; raises KeystoreRefused for a taken name or an unusable file."""
    name = name.strip()
    if db.session.scalar(select(Keystore).where(Keystore.name == name)) is not None:
        raise KeystoreRefused(f"A keystore named {name} already exists.", "name")
    if kind not in {k.value for k in KeystoreKind}:
        raise KeystoreRefused("Choose truststore or signing keystore.", "kind")
    try:
        if kind == KeystoreKind.TRUSTSTORE:
            entries, pem = read_truststore(data)
        else:
            entries, pem = read_pkcs12(data, password)
    except KeystoreError as exc:
        field = "password" if "password" in str(exc) and kind == KeystoreKind.SIGNING else "file"
        raise KeystoreRefused(str(exc), field) from None
    keystore = Keystore(
        name=name,
        kind=kind,
        filename=filename[:255],
        certificates_pem=pem,
        entries=[e.as_dict() for e in entries],
    )
    if kind == KeystoreKind.SIGNING:
        box = get_secretbox()
        keystore.pkcs12_encrypted = box.encrypt(base64.b64encode(data).decode("ascii"))
        keystore.password_encrypted = box.encrypt(password) if password else None
    db.session.add(keystore)
    db.session.flush()
    return keystore


def accounts_using(keystore: Keystore) -> list[EmailAccount]:
    return list(
        db.session.scalars(
            select(EmailAccount)
            .where(
                or_(
                    EmailAccount.smtp_truststore_id == keystore.id,
                    EmailAccount.receiver_truststore_id == keystore.id,
                    EmailAccount.signing_keystore_id == keystore.id,
                )
            )
            .order_by(EmailAccount.account_id)
        )
    )


def delete_keystore(keystore: Keystore) -> None:
    """Remove a keystore; raises KeystoreRefused while an account or OAuth profile uses it."""
    users = accounts_using(keystore)
    if users:
        names = ", ".join(a.account_id for a in users)
        raise KeystoreRefused(f"The accounts {names} use this keystore; change them first.")
    profiles = db.session.scalars(
        select(AuthProfile.name)
        .where(AuthProfile.truststore_id == keystore.id)
        .order_by(AuthProfile.name)
    ).all()
    if profiles:
        raise KeystoreRefused(
            f"The OAuth 2.0 profiles {', '.join(profiles)} use this keystore; change them first."
        )
    db.session.delete(keystore)
    db.session.flush()


def list_keystores(kind: KeystoreKind | None = None) -> list[Keystore]:
    stmt = select(Keystore).order_by(Keystore.name)
    if kind is not None:
        stmt = stmt.where(Keystore.kind == kind)
    return list(db.session.scalars(stmt))
