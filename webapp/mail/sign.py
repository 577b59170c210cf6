"""S/MIME signing of outgoing messages (RFC 8551 multipart/signed, detached signature).

The signature covers the inner part exactly as it is transmitted: its bytes are produced once,
with CRLF line endings as `message_bytes` writes them, signed as binary data, and then carried
unchanged inside the multipart/signed. That is why the inner part must be 7-bit (a relay
that re-encodes 8-bit text would break the signature); `build_outbound` always makes it so.

Before signing, the certificate is checked for what makes mail clients accept the signature:
- the key belongs to the certificate (otherwise no one can verify it);
- the certificate is valid now (expired signatures show as invalid or untrusted);
- it names the From address, as an rfc822Name subjectAltName or, in older certificates, an
  emailAddress in the subject (RFC 8550 3; Outlook and Thunderbird warn on a mismatch);
- its key usage, when present, allows digitalSignature or nonRepudiation (RFC 8550 4.4.2), and
  its extended key usage, when present, includes emailProtection (RFC 8550 4.4.4; OpenSSL's
  S/MIME verification refuses it otherwise).
Trust in the issuing CA is the recipient's to decide and is not checked here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webapp.mail.outbound import POLICY

SIGNATURE_TYPE = "application/pkcs7-signature"

_Extension = TypeVar("_Extension", bound=x509.ExtensionType)


class SigningError(ValueError):
    """The message cannot be signed with this key and certificate; the message says why."""


def smime_sign(
    message: EmailMessage,
    key: pkcs7.PKCS7PrivateKeyTypes,
    cert: x509.Certificate,
    chain: Sequence[x509.Certificate] = (),
) -> EmailMessage:
    """`message` as multipart/signed with a detached SHA-256 signature; raises SigningError."""
    check_signer(key, cert, from_address=_from_address(message))
    inner = _inner_part(message)
    # The standard generator writes the parts of a multipart/signed without refolding their
    # headers (so as not to alter signed content); producing the signed bytes the same way
    # makes every serialisation of the result carry them unchanged: message_bytes, as_bytes,
    # smtplib's send_message.
    signed_bytes = inner.as_bytes(policy=POLICY.clone(max_line_length=0))
    if not signed_bytes.isascii():
        raise SigningError(
            "The message holds 8-bit content, which relays may re-encode and so break the "
            "signature; encode its parts as quoted-printable or base64."
        )
    builder = pkcs7.PKCS7SignatureBuilder().set_data(signed_bytes)
    builder = builder.add_signer(cert, key, hashes.SHA256())
    for extra in chain:
        builder = builder.add_certificate(extra)
    signature = builder.sign(
        serialization.Encoding.DER,
        # Binary: sign the bytes as given; they already are canonical CRLF text.
        [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
    )

    signature_part = MIMEPart(policy=POLICY)
    signature_part.set_content(
        signature,
        "application",
        "pkcs7-signature",
        disposition="attachment",
        filename="smime.p7s",
        cte="base64",
    )
    outer = EmailMessage(policy=POLICY)
    for name, value in message.items():
        if not name.lower().startswith("content-") and name.lower() != "mime-version":
            outer[name] = value
    outer["MIME-Version"] = "1.0"
    outer["Content-Type"] = f'multipart/signed; protocol="{SIGNATURE_TYPE}"; micalg=sha-256'
    _attach(outer, inner)
    _attach(outer, signature_part)
    return outer


def check_signer(
    key: pkcs7.PKCS7PrivateKeyTypes,
    cert: x509.Certificate,
    *,
    from_address: str,
) -> None:
    """Whether `key` and `cert` can sign mail from `from_address`; raises SigningError."""
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SigningError("S/MIME signing needs an RSA or EC private key.")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise SigningError("The private key does not belong to the signing certificate.")
    moment = datetime.now(UTC)
    if moment > cert.not_valid_after_utc:
        raise SigningError(
            f"The signing certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
            "upload a renewed one."
        )
    if moment < cert.not_valid_before_utc:
        raise SigningError(
            f"The signing certificate is only valid from {cert.not_valid_before_utc:%Y-%m-%d}."
        )
    addresses = certificate_addresses(cert)
    if not addresses:
        raise SigningError(
            "The signing certificate names no email address; mail clients show its "
            "signatures as not matching the sender."
        )
    if from_address.lower() not in addresses:
        raise SigningError(
            f"The signing certificate is for {', '.join(sorted(addresses))}, not for the "
            f"sender {from_address}."
        )
    usage = _extension(cert, x509.KeyUsage)
    if usage is not None and not (usage.digital_signature or usage.content_commitment):
        raise SigningError("The signing certificate's key usage does not allow signatures.")
    extended = _extension(cert, x509.ExtendedKeyUsage)
    if extended is not None and not {
        ExtendedKeyUsageOID.EMAIL_PROTECTION,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    }.intersection(extended):
        raise SigningError("The signing certificate is not issued for email protection.")


def certificate_addresses(cert: x509.Certificate) -> set[str]:
    """The email addresses a certificate names, lower-cased."""
    found: set[str] = set()
    names = _extension(cert, x509.SubjectAlternativeName)
    if names is not None:
        found.update(value.lower() for value in names.get_values_for_type(x509.RFC822Name))
    for attribute in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        if isinstance(attribute.value, str):
            found.add(attribute.value.lower())
    return found


def _from_address(message: EmailMessage) -> str:
    header = message.get_all("From") or []
    addresses: list[Address] = []
    for value in header:
        addresses.extend(getattr(value, "addresses", ()))
    if len(header) != 1 or len(addresses) != 1 or not addresses[0].addr_spec:
        raise SigningError("A message to sign needs exactly one From address.")
    return addresses[0].addr_spec


def _inner_part(message: EmailMessage) -> EmailMessage:
    inner = copy.deepcopy(message)
    for name in {name.lower() for name in inner}:
        if not name.startswith("content-"):
            del inner[name]
    return inner


def _attach(container: MIMEPart, part: MIMEPart) -> None:
    container.attach(part)


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _extension(cert: x509.Certificate, kind: type[_Extension]) -> _Extension | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
