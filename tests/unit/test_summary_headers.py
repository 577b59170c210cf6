"""The stored summary reads the header block only, and reads it as the strict parser would."""

from __future__ import annotations

import email
from email import policy

import pytest

from webapp.mail.parse import parse_message
from webapp.mail.summary import summarize


def strict(raw: bytes) -> str:
    message = email.message_from_bytes(raw, policy=policy.default)
    return " ".join(str(message["Subject"] or "").split())


def test_lines_of_the_body_are_not_headers():
    raw = (
        b"From: Ann <ann@example.com>\r\nSubject: Real\r\n\r\n"
        b"Subject: Fake\r\nMessage-ID: <fake@example.com>\r\n" + b"x" * 200_000
    )
    summary = summarize(raw)
    assert (summary.subject, summary.message_id) == ("Real", None)
    assert summary.from_address == "ann@example.com"


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: folded\r\n  over two lines\r\nMessage-ID:\r\n <a@b.example>\r\n\r\nx",
        b"Subject: =?utf-8?q?caf=C3=A9?= and =?iso-8859-1?q?th=E9?=\r\n\r\n",
        b"Subject: caf\xc3\xa9 in raw UTF-8\r\nMessage-ID: <a@b> (a comment)\r\n\r\n",
        b"Subject: =?utf-8?b?broken\r\nMessage-ID: no-brackets@example.com\r\n\r\n",
        b"Subject: no blank line after the headers\nMessage-ID: <unix@example.com>\n",
    ],
)
def test_values_read_as_the_strict_parser_reads_them(raw):
    """The subject as the strict parser reads it; the Message-ID as ingest reads it (the one
    the duplicate check and threading compare)."""
    summary = summarize(raw)
    assert summary.subject == strict(raw)
    assert summary.message_id == parse_message(raw).message_id


@pytest.mark.parametrize(
    "header",
    [
        b"<plain@example.com>",
        b"abc@example.com",  # no angle brackets
        b"<id@example.com> (a comment)",
        b"junk <id@example.com>",
        b"<caf\xc3\xa9@example.com>",  # UTF-8, as RFC 6532 allows
        b"<caf\xe9@example.com>",  # Latin-1
        b"<a\xc2\xa0b@example.com>",  # a no-break space inside
        b"<a\x01b@example.com>",
        b"",
    ],
)
def test_the_stored_message_id_is_the_one_ingest_reads(header):
    """The poll stores a Message-ID that the duplicate check and threading compare with the
    one ingest reads from the same bytes: they must be equal."""
    raw = b"From: a@example.com\r\nSubject: x\r\nMessage-ID: " + header + b"\r\n\r\nbody\r\n"
    assert summarize(raw).message_id == parse_message(raw).message_id
