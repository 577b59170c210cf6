"""Proof of a sender's domain: DKIM signatures (verified with keys the test makes) and the
Authentication-Results headers of trusted servers."""

from __future__ import annotations

from email.utils import formatdate

import dkim
import dns.name
import pytest

from tests.support.dkim import new_dkim_key
from webapp.mail.authres import (
    aligned,
    authentication_results,
    dkim_result,
    is_hostname,
    pinned_dnsfunc,
    pinned_keys,
)
from webapp.mail.parse import parse_message


@pytest.fixture(scope="module")
def signer() -> tuple[bytes, bytes]:
    """(private key PEM, the TXT record publishing its public key)."""
    return new_dkim_key()


def _message(sender: str = "manager@example.com", body: str = "APPROVE\r\n") -> bytes:
    return (
        f"From: The Manager <{sender}>\r\nTo: approvals+abc@casemail.test\r\n"
        f"Subject: Re: [EXP-1001] Approve\r\nMessage-ID: <r1@example.com>\r\n"
        f"Date: {formatdate()}\r\n\r\n{body}"
    ).encode()


def _signed(pem: bytes, raw: bytes, domain: bytes = b"example.com") -> bytes:
    return dkim.sign(raw, b"sel", domain, pem, include_headers=[b"from", b"to", b"subject"]) + raw


def _keys(record: bytes, domain: str = "example.com") -> dict[str, bytes]:
    return {f"sel._domainkey.{domain}": record}


def test_a_valid_signature_of_the_from_domain_passes(signer):
    pem, record = signer
    result = dkim_result(_signed(pem, _message()), pinned_dnsfunc(_keys(record), None))
    assert result.valid_domains == ("example.com",)
    assert result.passes_for("example.com") == "example.com"
    assert result.passes_for("mail.example.com") == "example.com"
    assert result.passes_for("example.org") is None


def test_an_altered_message_does_not_pass(signer):
    pem, record = signer
    signed = _signed(pem, _message())
    altered = signed.replace(b"APPROVE", b"REJECT!")
    result = dkim_result(altered, pinned_dnsfunc(_keys(record), None))
    assert result.signed and result.valid_domains == ()
    assert "body hash mismatch" in result.notes[0]


def test_a_signature_without_a_published_key_does_not_pass(signer):
    pem, _ = signer
    result = dkim_result(_signed(pem, _message()), pinned_dnsfunc({}, None))
    assert result.valid_domains == () and result.notes[0].startswith("d=example.com:")


def test_a_valid_signature_of_another_domain_does_not_vouch_for_the_sender(signer):
    pem, record = signer
    raw = _signed(pem, _message(), domain=b"mailer.example.net")
    result = dkim_result(raw, pinned_dnsfunc(_keys(record, "mailer.example.net"), None))
    assert result.valid_domains == ("mailer.example.net",)
    assert result.passes_for("example.com") is None


def test_an_unsigned_message_is_not_signed():
    result = dkim_result(_message(), pinned_dnsfunc({}, None))
    assert not result.signed and result.passes_for("example.com") is None


def test_a_key_that_is_not_pinned_is_looked_up_with_the_fallback(signer):
    pem, record = signer
    asked: list[bytes] = []

    def fallback(name: bytes, timeout: int = 5) -> bytes | None:
        asked.append(name)
        return record

    result = dkim_result(_signed(pem, _message()), pinned_dnsfunc({}, fallback))
    assert asked == [b"sel._domainkey.example.com."]
    assert result.passes_for("example.com") == "example.com"


@pytest.mark.parametrize(
    ("signer_domain", "from_domain", "expected"),
    [
        ("example.com", "example.com", True),
        ("EXAMPLE.com.", "example.com", True),
        ("example.com", "mail.example.com", True),
        ("mail.example.com", "example.com", False),
        ("evil-example.com", "example.com", False),
        ("ample.com", "example.com", False),
        ("com", "example.com", False),
    ],
)
def test_alignment(signer_domain, from_domain, expected):
    assert aligned(signer_domain, from_domain) is expected


def _headers(*lines: str) -> tuple[tuple[str, str], ...]:
    raw = "\r\n".join(lines) + "\r\n" + _message().decode()
    return parse_message(raw.encode()).headers


def test_the_topmost_header_of_a_trusted_server_counts():
    headers = _headers(
        "Authentication-Results: mx.casemail.test; spf=pass smtp.mailfrom=example.com;"
        " dkim=pass (good signature) header.d=example.com header.s=sel;"
        " dmarc=pass (p=none) header.from=example.com",
        "Received: from mail.example.com by mx.casemail.test",
    )
    results = authentication_results(headers, ["MX.casemail.test"])
    assert results.authserv_id == "mx.casemail.test"
    assert [r.method for r in results.results] == ["spf", "dkim", "dmarc"]
    assert str(results.passes_for("example.com")) == "dkim=pass header.d=example.com header.s=sel"
    assert results.passes_for("example.org") is None


def test_a_forged_header_below_the_trusted_servers_own_is_never_read():
    headers = _headers(
        "Authentication-Results: mx.casemail.test; dkim=none; dmarc=fail header.from=example.com",
        "Authentication-Results: mx.casemail.test; dmarc=pass header.from=example.com",
    )
    results = authentication_results(headers, ["mx.casemail.test"])
    assert results.passes_for("example.com") is None
    assert [str(r) for r in results.results] == ["dkim=none", "dmarc=fail header.from=example.com"]


def test_headers_of_other_authserv_ids_are_ignored():
    headers = _headers(
        "Authentication-Results: mx.evil.example; dkim=pass header.d=example.com",
        "Authentication-Results: relay.example.com (our relay); dmarc=pass header.from=example.com",
    )
    results = authentication_results(headers, ["mx.casemail.test"])
    assert results.authserv_id is None
    assert results.ignored_ids == ("mx.evil.example", "relay.example.com")
    assert results.passes_for("example.com") is None
    trusted = authentication_results(headers, ["relay.example.com"])
    assert trusted.ignored_ids == ("mx.evil.example",)
    assert str(trusted.passes_for("example.com")) == "dmarc=pass header.from=example.com"


def test_dkim_pass_is_read_from_header_i_and_must_align():
    headers = _headers("Authentication-Results: mx.casemail.test; dkim=pass header.i=@example.com")
    assert authentication_results(headers, ["mx.casemail.test"]).passes_for("example.com")
    other = _headers("Authentication-Results: mx.casemail.test; dkim=pass header.d=bulk.example")
    assert authentication_results(other, ["mx.casemail.test"]).passes_for("example.com") is None


def test_dmarc_pass_must_name_the_from_domain():
    headers = _headers("Authentication-Results: mx.casemail.test; dmarc=pass")
    assert authentication_results(headers, ["mx.casemail.test"]).passes_for("example.com") is None


def test_an_unreadable_trusted_header_proves_nothing():
    headers = _headers("Authentication-Results: mx.casemail.test; dkim=pass ;; (")
    results = authentication_results(headers, ["mx.casemail.test"])
    assert results.problem.startswith("unreadable")
    assert results.passes_for("example.com") is None


def test_pinned_keys_are_read_from_zone_file_lines():
    text = (
        "# keys of our partners\n"
        "\n"
        'sel._domainkey.example.com. "v=DKIM1; k=rsa; " "p=AAAA"\n'
        "s2._domainkey.Example.org v=DKIM1; k=rsa; p=BBBB\n"
    )
    assert pinned_keys(text) == {
        "sel._domainkey.example.com": b"v=DKIM1; k=rsa; p=AAAA",
        "s2._domainkey.example.org": b"v=DKIM1; k=rsa; p=BBBB",
    }
    with pytest.raises(ValueError, match="line 2 is not"):
        pinned_keys("sel._domainkey.example.com v=DKIM1; p=A\nexample.com v=DKIM1\n")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mx.example.com", True),
        ("MX1.Example.COM", True),
        ("localhost", True),
        ("mx example.com", False),
        ("mx.example.com;", False),
        ("-mx.example.com", False),
        ("", False),
    ],
)
def test_authserv_ids_are_host_names(value, expected):
    assert is_hostname(value) is expected


def test_a_signer_name_dns_refuses_is_a_signature_that_does_not_pass(signer):
    pem, _ = signer

    def refuses(name: bytes, timeout: int = 5) -> bytes | None:
        raise dns.name.EmptyLabel  # what dnspython says of d=example..com

    result = dkim_result(_signed(pem, _message()), pinned_dnsfunc({}, refuses))
    assert result.signed and result.valid_domains == ()
    assert result.notes[0].startswith("d=example.com:")
