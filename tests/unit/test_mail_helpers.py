import pytest

from webapp.mail.compose import HeaderValueError, check_header_value, quote, reply_subject
from webapp.mail.sandbox import address_base
from webapp.mail.summary import summarize


def test_summary_decodes_encoded_words_and_takes_the_first_sender():
    raw = (
        b"From: =?utf-8?b?w4lsaXNl?= <Elise@Example.COM>, other@example.com\r\n"
        b"Subject: =?iso-8859-1?q?caf=E9?=\r\nMessage-ID: <1@x>\r\n\r\nbody"
    )
    summary = summarize(raw)
    assert summary.subject == "café"
    assert summary.from_address == "elise@example.com"
    assert summary.message_id == "<1@x>"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage without headers",
        b"From: <<<\r\nSubject: =?bogus?x?y?=\r\n\r\n",
        b"\xff\xfe\x00",
    ],
)
def test_summary_never_raises_on_malformed_input(raw):
    summary = summarize(raw)
    assert summary.from_address == ""


def test_header_values_with_line_breaks_are_refused():
    with pytest.raises(HeaderValueError, match="Subject must be a single line"):
        check_header_value("Subject", "Hi\r\nBcc: x@example.com")
    assert check_header_value("Subject", "Hi") == "Hi"


def test_small_helpers():
    assert reply_subject("Re: hello") == "Re: hello"
    assert reply_subject("hello") == "Re: hello"
    assert quote("a\n\nb") == "> a\n>\n> b"
    assert address_base("Support+EXP-1@Casemail.test") == "support@casemail.test"
