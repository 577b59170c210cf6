import dataclasses
import datetime as dt
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webapp.mail.outbound import OutboundAttachment, OutboundSpec, build_outbound, message_bytes
from webapp.mail.parse import parse_message
from webapp.mail.sign import SigningError, smime_sign

SENDER = "approvals@casemail.test"
NOW = dt.datetime.now(dt.UTC)


def _name(common_name: str, email: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if email:
        attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return x509.Name(attributes)


def _usage(*, signing: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signing,
        content_commitment=signing,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class Issuer:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _ca(common_name: str = "Casemail test CA", parent: Issuer | None = None) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_name = parent.cert.subject if parent else _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(signing=False, ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(parent.key if parent else key, hashes.SHA256())
    )
    return Issuer(key, cert)


def _signer(
    issuer: Issuer,
    *,
    key=None,
    emails=(SENDER,),
    subject_email: str | None = None,
    eku=(ExtendedKeyUsageOID.EMAIL_PROTECTION,),
    usage: x509.KeyUsage | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
):
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("Casemail approvals", subject_email))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - dt.timedelta(days=1))
        .not_valid_after(not_after or NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage or _usage(signing=True, ca=False), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    if emails:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(e) for e in emails]), critical=False
        )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return key, builder.sign(issuer.key, hashes.SHA256())


@pytest.fixture(scope="module")
def ca() -> Issuer:
    return _ca()


@pytest.fixture(scope="module")
def signer(ca):
    return _signer(ca)


@pytest.fixture
def ca_file(ca, tmp_path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    return path


def _message(**changes):
    spec = OutboundSpec(
        from_address=SENDER,
        from_name="Casemail Approvals",
        to=("Paula <paula@example.test>",),
        subject="[EXP-1042] Approval needed",
        text="Reply with APPROVE or REJECT on the first line.\n",
        message_id_domain="casemail.test",
        in_reply_to="<request@example.test>",
        automatic=True,
        token="mnqxgzlnmfuwyllhn5wgizloee",
        case_id="EXP-1042",
    )
    return build_outbound(dataclasses.replace(spec, **changes))


def _verify(raw: bytes, ca_file: Path, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    signed = tmp_path / "signed.eml"
    signed.write_bytes(raw)
    return subprocess.run(
        [
            "openssl",
            "smime",
            "-verify",
            "-in",
            signed,
            "-CAfile",
            ca_file,
            "-out",
            tmp_path / "out",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )


def test_openssl_is_available():
    version = subprocess.run(["openssl", "version"], capture_output=True, check=True, timeout=10)
    assert version.stdout.startswith(b"OpenSSL")


def test_signed_message_verifies_with_openssl(signer, ca_file, tmp_path):
    key, cert = signer
    message = _message()
    inner = message_bytes(message).split(b"\r\n\r\n", 1)[1]
    signed = smime_sign(message, key, cert)
    raw = message_bytes(signed)
    # smtplib's send_message and as_bytes() write the very same bytes.
    assert signed.as_bytes() == raw

    result = _verify(raw, ca_file, tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert b"Verification successful" in result.stderr
    # What openssl checked is the content the reader sees.
    assert inner in (tmp_path / "out").read_bytes()


def test_outer_headers_move_out_and_the_signed_part_carries_only_content_headers(signer):
    key, cert = signer
    message = _message()
    signed = smime_sign(message, key, cert)
    assert signed.get_content_type() == "multipart/signed"
    assert signed.get_param("protocol") == "application/pkcs7-signature"
    assert signed.get_param("micalg") == "sha-256"
    for name in ("From", "To", "Subject", "Date", "Message-ID", "In-Reply-To", "References"):
        assert str(signed[name]) == str(message[name])
    assert signed["Auto-Submitted"] == "auto-generated"
    assert signed["X-Casemail-Token"] == "mnqxgzlnmfuwyllhn5wgizloee"
    inner, signature = signed.iter_parts()
    assert all(name.lower().startswith("content-") for name in inner)
    assert inner.get_content_type() == "text/plain"
    assert signature.get_content_type() == "application/pkcs7-signature"
    assert signature.get_filename() == "smime.p7s"

    parsed = parse_message(message_bytes(signed))
    assert parsed.subject == "[EXP-1042] Approval needed"
    assert parsed.sender == SENDER
    assert parsed.text == "Reply with APPROVE or REJECT on the first line.\n"
    assert parsed.header("X-Casemail-Case") == "EXP-1042"


def test_signed_message_with_attachments_and_non_ascii_text_verifies(signer, ca_file, tmp_path):
    key, cert = signer
    pdf = b"%PDF-1.7\n" + bytes(range(256)) * 64
    message = _message(
        from_name="Zoë Müller → Genehmigungen",
        subject="Genehmigung für März → Reisekosten Köln → München, bitte bis Freitag 日本語",
        text="Grüße aus Köln,\n\nbitte antworten Sie mit APPROVE.   \nFrom here on: quoted\n",
        html="<p>Grüße aus <b>Köln</b></p>",
        attachments=(
            OutboundAttachment("Übersicht März → Reisekosten.pdf", "application/pdf", pdf),
            OutboundAttachment("notes.txt", "text/plain", "Straße\n".encode()),
        ),
    )
    raw = message_bytes(smime_sign(message, key, cert))
    assert raw.isascii()

    result = _verify(raw, ca_file, tmp_path)
    assert result.returncode == 0, result.stderr.decode()

    parsed = parse_message(raw)
    assert parsed.subject == str(message["Subject"])
    assert parsed.from_addresses == (("Zoë Müller → Genehmigungen", SENDER),)
    assert (
        parsed.text
        == "Grüße aus Köln,\n\nbitte antworten Sie mit APPROVE.   \nFrom here on: quoted\n"
    )
    assert parsed.html == "<p>Grüße aus <b>Köln</b></p>\n"
    names = [(a.filename, a.content) for a in parsed.attachments]
    assert names[:2] == [
        ("Übersicht März → Reisekosten.pdf", pdf),
        ("notes.txt", "Straße\n".encode()),
    ]
    assert names[2][0] == "smime.p7s"


@pytest.mark.parametrize("where", ["text", "attachment"])
def test_one_changed_byte_breaks_the_signature(signer, ca_file, tmp_path, where):
    key, cert = signer
    message = _message(
        text="Approve the trip to Cologne.\n",
        attachments=(OutboundAttachment("a.txt", "text/plain", b"exactly these bytes"),),
    )
    raw = message_bytes(smime_sign(message, key, cert))
    assert _verify(raw, ca_file, tmp_path).returncode == 0

    target = b"Cologne" if where == "text" else b"ZXhhY3RseSB0aGVzZSBieXRlcw=="
    assert raw.count(target) == 1
    tampered = raw.replace(target, target[:-3] + b"X" + target[-2:])
    result = _verify(tampered, ca_file, tmp_path)
    assert result.returncode != 0
    assert b"Verification successful" not in result.stderr


def test_intermediate_certificates_travel_with_the_signature(ca, ca_file, tmp_path):
    intermediate = _ca("Casemail issuing CA", parent=ca)
    key, cert = _signer(intermediate)
    message = _message()

    result = _verify(message_bytes(smime_sign(message, key, cert)), ca_file, tmp_path)
    assert result.returncode != 0  # the recipient knows only the root

    raw = message_bytes(smime_sign(message, key, cert, chain=[intermediate.cert]))
    result = _verify(raw, ca_file, tmp_path)
    assert result.returncode == 0, result.stderr.decode()


def test_ec_keys_sign_too(ca, ca_file, tmp_path):
    key, cert = _signer(ca, key=ec.generate_private_key(ec.SECP256R1()))
    result = _verify(message_bytes(smime_sign(_message(), key, cert)), ca_file, tmp_path)
    assert result.returncode == 0, result.stderr.decode()


def test_legacy_email_in_subject_is_accepted(ca, ca_file, tmp_path):
    key, cert = _signer(ca, emails=(), subject_email=SENDER)
    result = _verify(message_bytes(smime_sign(_message(), key, cert)), ca_file, tmp_path)
    assert result.returncode == 0, result.stderr.decode()


def test_mismatched_key_is_refused(ca, signer):
    _, cert = signer
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(SigningError, match="private key does not belong"):
        smime_sign(_message(), other, cert)


def test_expired_certificate_is_refused(ca):
    key, cert = _signer(
        ca, not_before=NOW - dt.timedelta(days=60), not_after=NOW - dt.timedelta(days=1)
    )
    with pytest.raises(SigningError, match="expired on"):
        smime_sign(_message(), key, cert)


def test_not_yet_valid_certificate_is_refused(ca):
    key, cert = _signer(ca, not_before=NOW + dt.timedelta(days=1))
    with pytest.raises(SigningError, match="only valid from"):
        smime_sign(_message(), key, cert)


def test_certificate_without_email_address_is_refused(ca):
    key, cert = _signer(ca, emails=())
    with pytest.raises(SigningError, match="names no email address"):
        smime_sign(_message(), key, cert)


def test_certificate_for_another_address_is_refused(ca):
    key, cert = _signer(ca, emails=("someone@casemail.test",))
    with pytest.raises(SigningError, match=r"for someone@casemail\.test, not for the sender"):
        smime_sign(_message(), key, cert)


def test_certificate_address_matches_regardless_of_case(ca, ca_file, tmp_path):
    key, cert = _signer(ca, emails=("Approvals@CaseMail.test",))
    result = _verify(message_bytes(smime_sign(_message(), key, cert)), ca_file, tmp_path)
    assert result.returncode == 0, result.stderr.decode()


def test_certificate_not_for_email_protection_is_refused(ca):
    key, cert = _signer(ca, eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    with pytest.raises(SigningError, match="not issued for email protection"):
        smime_sign(_message(), key, cert)


def test_certificate_whose_key_usage_forbids_signing_is_refused(ca):
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    key, cert = _signer(ca, usage=usage)
    with pytest.raises(SigningError, match="key usage does not allow signatures"):
        smime_sign(_message(), key, cert)


def test_eight_bit_content_is_refused(signer):
    key, cert = signer
    message = _message()
    message.set_content("Grüße\n", cte="8bit")
    with pytest.raises(SigningError, match="8-bit content"):
        smime_sign(message, key, cert)


def test_message_without_a_single_from_is_refused(signer):
    key, cert = signer
    message = _message()
    del message["From"]
    message["From"] = f"{SENDER}, other@casemail.test"
    with pytest.raises(SigningError, match="exactly one From address"):
        smime_sign(message, key, cert)


def test_long_non_ascii_file_names_keep_signed_lines_short(signer, ca_file, tmp_path):
    key, cert = signer
    name = "Reisekostenübersicht 日本語 " * 12 + ".pdf"
    message = _message(attachments=(OutboundAttachment(name, "application/pdf", b"%PDF"),))
    raw = message_bytes(smime_sign(message, key, cert))
    # Headers inside a signed part are not folded; SMTP allows 998 octets a line.
    assert max(len(line) for line in raw.split(b"\r\n")) < 998
    assert _verify(raw, ca_file, tmp_path).returncode == 0
    (attachment, _) = parse_message(raw).attachments
    assert attachment.filename.startswith("Reisekostenübersicht 日本語")
    assert attachment.filename.endswith(".pdf")
