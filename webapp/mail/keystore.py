"""Reading uploaded keystores: PEM CA bundles (truststores) and PKCS#12 files (signing)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7, pkcs12

EXPIRY_WARNING = dt.timedelta(days=30)
MAX_KEYSTORE_BYTES = 1024 * 1024


class KeystoreError(ValueError):
    """The uploaded file cannot be used; the message says why."""


@dataclass(frozen=True)
class CertificateEntry:
    alias: str
    subject: str
    issuer: str
    not_after: str  # ISO 8601, UTC
    has_key: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _entry(alias: str, cert: x509.Certificate, has_key: bool) -> CertificateEntry:
    return CertificateEntry(
        alias=alias,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_after=cert.not_valid_after_utc.isoformat(),
        has_key=has_key,
    )


def read_truststore(data: bytes) -> tuple[list[CertificateEntry], str]:
    """The certificates of a PEM bundle and the bundle as text; raises KeystoreError."""
    if len(data) > MAX_KEYSTORE_BYTES:
        raise KeystoreError("The file is larger than 1 MB; a CA bundle is much smaller.")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise KeystoreError(
            "The file is not a PEM CA bundle (-----BEGIN CERTIFICATE----- blocks)."
        ) from None
    entries = [_entry(f"cert-{n}", cert, False) for n, cert in enumerate(certs, start=1)]
    pem = "".join(cert.public_bytes(Encoding.PEM).decode("ascii") for cert in certs)
    return entries, pem


def read_pkcs12(data: bytes, password: str) -> tuple[list[CertificateEntry], str]:
    """The entries of a PKCS#12 file and its certificates as PEM; raises KeystoreError."""
    if len(data) > MAX_KEYSTORE_BYTES:
        raise KeystoreError("The file is larger than 1 MB; a PKCS#12 keystore is much smaller.")
    try:
        bundle = pkcs12.load_pkcs12(data, password.encode("utf-8") if password else None)
    except ValueError:
        raise KeystoreError(
            "The file is not a PKCS#12 keystore, or the keystore password is not right."
        ) from None
    entries: list[CertificateEntry] = []
    certs: list[x509.Certificate] = []
    if bundle.cert is not None:
        alias = (bundle.cert.friendly_name or b"").decode("utf-8", "replace") or "1"
        entries.append(_entry(alias, bundle.cert.certificate, bundle.key is not None))
        certs.append(bundle.cert.certificate)
    for n, extra in enumerate(bundle.additional_certs, start=len(entries) + 1):
        alias = (extra.friendly_name or b"").decode("utf-8", "replace") or f"cert-{n}"
        entries.append(_entry(alias, extra.certificate, False))
        certs.append(extra.certificate)
    if bundle.key is None or not any(e.has_key for e in entries):
        raise KeystoreError(
            "The PKCS#12 file holds no private key with its certificate; a signing keystore "
            "needs one."
        )
    pem = "".join(cert.public_bytes(Encoding.PEM).decode("ascii") for cert in certs)
    return entries, pem


def expires_soon(not_after: str, now: dt.datetime) -> bool:
    """Whether a certificate has expired or expires within 30 days of `now`."""
    return dt.datetime.fromisoformat(not_after) - now <= EXPIRY_WARNING


@dataclass(frozen=True)
class SigningKey:
    """A private key with its certificate and the rest of the chain, ready for smime_sign."""

    key: pkcs7.PKCS7PrivateKeyTypes
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]


def load_signing_key(data: bytes, password: str, alias: str = "") -> SigningKey:
    """The key entry named `alias` of a PKCS#12 file (the first key entry when `alias` is blank)
    with the other certificates as its chain; raises KeystoreError.

    A PKCS#12 file as the cryptography package reads it holds one private key, so the key
    entry is the certificate that belongs to it; `alias` is checked against its friendly name.
    """
    try:
        bundle = pkcs12.load_pkcs12(data, password.encode("utf-8") if password else None)
    except ValueError:
        raise KeystoreError(
            "The signing keystore cannot be read: the file or its stored password is not right."
        ) from None
    if bundle.key is None or bundle.cert is None:
        raise KeystoreError("The signing keystore holds no private key with its certificate.")
    if not isinstance(bundle.key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise KeystoreError("S/MIME signing needs an RSA or EC private key.")
    name = (bundle.cert.friendly_name or b"").decode("utf-8", "replace") or "1"
    wanted = alias.strip()
    if wanted and wanted != name:
        raise KeystoreError(
            f"The signing keystore has no key entry with the alias {wanted!r} (it has {name!r})."
        )
    chain = tuple(extra.certificate for extra in bundle.additional_certs)
    return SigningKey(bundle.key, bundle.cert.certificate, chain)
