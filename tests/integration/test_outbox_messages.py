"""What the sent bytes hold: S/MIME signatures that openssl verifies, no header injection from
subjects, display names or file names, case attachments; and sending through Microsoft Graph."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from sqlalchemy import update

from tests.integration import test_outbox as base
from tests.integration.test_outbox import queue, row, send, set_row
from tests.unit.test_sign import _ca, _signer
from webapp.extensions import db
from webapp.mail.correlate import new_reply_token
from webapp.models import AuthProfile, CaseAttachment, EmailAccount, OutboundKind
from webapp.services import cases as case_service
from webapp.services.auth_profiles import profile_token
from webapp.services.keystores import create_keystore

smtp_account = base.smtp_account

SENDER = "approvals@example.com"
UPN = "approvals@contoso.example"


def _signing_keystore(
    app, tmp_path: Path, alias: str = "approvals", email: str = SENDER
) -> tuple[int, Path]:
    """A PKCS#12 signing keystore for `email`, saved; returns its id and the CA file."""
    ca = _ca()
    key, cert = _signer(ca, emails=(email,))
    data = pkcs12.serialize_key_and_certificates(
        alias.encode(),
        key,
        cert,
        [ca.cert],
        serialization.BestAvailableEncryption(b"keystore-pw"),
    )
    ca_file = tmp_path / "signing-ca.pem"
    ca_file.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    with app.app_context():
        keystore = create_keystore(
            f"Signing {time.monotonic_ns()}", "signing", "s.p12", data, "keystore-pw"
        )
        db.session.commit()
        return keystore.id, ca_file


def _verify(raw: bytes, ca_file: Path, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    signed = tmp_path / "signed.eml"
    signed.write_bytes(raw)
    return subprocess.run(
        ["openssl", "smime", "-verify", "-in", signed, "-CAfile", ca_file, "-out", "/dev/null"],
        capture_output=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("alias", ["approvals", ""])
def test_signed_message_verifies_with_openssl(app, smtp_account, tmp_path, alias):
    server, account_id = smtp_account
    keystore_id, ca_file = _signing_keystore(app, tmp_path)
    set_account(app, account_id, signing_keystore_id=keystore_id, signing_alias=alias)
    token = new_reply_token()
    outbound_id = queue(app, account_id, reply_token=token, subject="Approval needed")

    (result,) = send(app, [outbound_id])

    assert result.status == "sent", result.detail
    (captured,) = server.wait_for(1)
    assert captured.parsed.get_content_type() == "multipart/signed"
    assert captured.parsed["X-Casemail-Token"] == token
    verified = _verify(captured.raw, ca_file, tmp_path)
    assert verified.returncode == 0, verified.stderr.decode()
    assert b"Verification successful" in verified.stderr


def test_a_wrong_alias_fails_the_message_with_a_reason(app, smtp_account, tmp_path):
    server, account_id = smtp_account
    keystore_id, _ = _signing_keystore(app, tmp_path)
    set_account(app, account_id, signing_keystore_id=keystore_id, signing_alias="someone-else")
    outbound_id = queue(app, account_id)

    (result,) = send(app, [outbound_id])

    assert result.status == "failed"
    assert "no key entry with the alias 'someone-else'" in row(app, outbound_id).last_error
    assert server.messages == []


def set_account(app, account_id: int, **values) -> None:
    with app.app_context():
        db.session.execute(update(EmailAccount).where(EmailAccount.id == account_id).values(values))
        db.session.commit()


def _header_names(raw: bytes) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return [line.split(":", 1)[0] for line in head.split("\r\n") if line and line[0] not in " \t"]


def test_line_breaks_never_make_an_extra_header(app, smtp_account, make_case_type, make_case):
    server, account_id = smtp_account
    set_account(app, account_id, smtp_display_name="Casemail\r\nBcc: evil@example.net")
    reference = make_case(make_case_type())
    with app.app_context():
        case = case_service.find_case(reference)
        db.session.add(
            CaseAttachment(
                case_id=case.id,
                filename='bill.pdf"\r\nBcc: evil@example.net\r\nX-Injected: 1',
                content_type="application/pdf",
                size=4,
                data=b"%PDF",
            )
        )
        db.session.commit()
    # A subject taken from an incoming email, with the line breaks an attacker would put there.
    outbound_id = queue(
        app,
        account_id,
        reference,
        subject="Re: invoice\r\nBcc: evil@example.net\nX-Injected: 1",
        attach_case_files=True,
    )

    (result,) = send(app, [outbound_id])

    assert result.status == "sent", result.detail
    (captured,) = server.wait_for(1)
    assert captured.rcpt_tos == ["paula@example.org"]
    raw = captured.raw
    assert b"\r\nBcc:" not in raw and b"\nBcc:" not in raw
    assert b"\r\nX-Injected:" not in raw and b"\nX-Injected:" not in raw
    names = [n.lower() for n in _header_names(raw)]
    assert "bcc" not in names and "x-injected" not in names
    message = captured.parsed
    assert message["Subject"] == f"[{reference}] Re: invoice Bcc: evil@example.net X-Injected: 1"
    assert message["From"].addresses[0].display_name == "Casemail Bcc: evil@example.net"
    assert message["From"].addresses[0].addr_spec == SENDER
    (attachment,) = list(message.iter_attachments())
    assert "\n" not in attachment.get_filename() and "\r" not in attachment.get_filename()
    for part in message.walk():
        assert "bcc" not in [k.lower() for k in part]
        assert "x-injected" not in [k.lower() for k in part]


def test_chosen_attachments_only(app, smtp_account, make_case_type, make_case):
    server, account_id = smtp_account
    reference = make_case(make_case_type())
    with app.app_context():
        case = case_service.find_case(reference)
        files = [
            CaseAttachment(case_id=case.id, filename=name, size=1, data=b"x")
            for name in ("a.txt", "b.txt")
        ]
        db.session.add_all(files)
        db.session.commit()
        chosen = files[1].id
    outbound_id = queue(
        app,
        account_id,
        reference,
        kind=OutboundKind.COMPOSED,
        automatic=False,
        attachment_ids=[chosen],
    )

    send(app, [outbound_id])

    message = server.wait_for(1)[0].parsed
    assert [a.get_filename() for a in message.iter_attachments()] == ["b.txt"]
    assert message["Auto-Submitted"] is None


@pytest.fixture
def graph_account(graph_profile, make_account):
    return make_account(
        provider="office365",
        sender_protocol="graph",
        graph_sender_upn=UPN,
        smtp_email=UPN,
        smtp_display_name="Contoso Approvals",
        graph_sender_reply_to="replies@contoso.example",
        sender_auth_profile_id=graph_profile(),
    )


def test_graph_sends_the_mime_message(app, graph_server, graph_account):
    token = new_reply_token()
    ids = [
        queue(app, graph_account, reply_token=token, subject="First"),
        queue(app, graph_account, subject="Second"),
    ]

    results = send(app, ids)

    assert [r.status for r in results] == ["sent", "sent"], results
    sent = graph_server.sent_mime
    assert [upn for upn, _ in sent] == [UPN, UPN]
    first = row(app, ids[0])
    assert f"Message-ID: {first.message_id}".encode() in sent[0][1]
    assert f"Reply-To: replies+{token}@contoso.example".encode() in sent[0][1]
    assert b"From: Contoso Approvals <approvals@contoso.example>" in sent[0][1]
    assert first.token_encrypted is None


def test_graph_sends_the_signed_message_as_it_is(app, graph_server, graph_account, tmp_path):
    keystore_id, ca_file = _signing_keystore(app, tmp_path, email=UPN)
    set_account(app, graph_account, signing_keystore_id=keystore_id, signing_alias="")
    outbound_id = queue(app, graph_account, subject="Approval needed")

    (result,) = send(app, [outbound_id])

    assert result.status == "sent", result.detail
    [(upn, mime)] = graph_server.sent_mime
    assert upn == UPN
    assert b"Content-Type: multipart/signed" in mime
    verified = _verify(mime, ca_file, tmp_path)
    assert verified.returncode == 0, verified.stderr.decode()
    assert b"Verification successful" in verified.stderr


def test_graph_throttling_is_retried(app, graph_server, graph_account):
    graph_server.state.send_failures.append(429)
    outbound_id = queue(app, graph_account)

    (result,) = send(app, [outbound_id])

    stored = row(app, outbound_id)
    assert result.status == stored.status == "pending"
    assert "429" in stored.last_error and stored.next_attempt_at is not None
    set_row(app, outbound_id, next_attempt_at=stored.created_at)
    (again,) = send(app, [outbound_id])
    assert again.status == "sent"
    assert len(graph_server.sent_mime) == 1


def test_graph_refusal_is_permanent(app, graph_server, graph_account):
    graph_server.state.send_failures.append(400)
    outbound_id = queue(app, graph_account)

    (result,) = send(app, [outbound_id])

    assert result.status == "failed"
    assert "Microsoft Graph answered 400" in row(app, outbound_id).last_error


def test_smtp_with_xoauth2_sends_with_the_profile_token(
    app, smtp_server, make_account, graph_profile
):
    profile_id = graph_profile("Google-like")
    with app.app_context():
        profile = db.session.get(AuthProfile, profile_id)
        token = profile_token(profile).access_token  # cached: the sender gets the same one
    server = smtp_server(
        xoauth2_tokens={"sender@example.com": token}, mechanisms=["XOAUTH2"], require_auth=True
    )
    account_id = make_account(
        smtp_port=server.port,
        smtp_auth="oauth",
        smtp_user_id="sender@example.com",
        sender_auth_profile_id=profile_id,
    )
    outbound_id = queue(app, account_id)

    (result,) = send(app, [outbound_id])

    assert result.status == "sent", result.detail
    (captured,) = server.wait_for(1)
    assert captured.auth_login == "sender@example.com"
    assert server.auth_mechanisms_used == ["XOAUTH2"]
