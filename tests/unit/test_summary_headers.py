"""The stored summary reads the header block only, and reads it as the strict parser would."""

from __future__ import annotations

import email
from email import policy

import pytest

from webapp.mail.summary import summarize


def strict(raw: bytes) -> tuple[str, str | None]:
    message = email.message_from_bytes(raw, policy=policy.default)
    subject = " ".join(str(message["Subject"] or "").split())
    message_id = " ".join(str(message["Message-ID"] or "").split()) or None
    return subject, message_id


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
    summary = summarize(raw)
    assert (summary.subject, summary.message_id) == strict(raw)
