import pytest

from webapp.mail.compose import HeaderValueError, build_message, quote, reply_subject
from webapp.mail.sandbox import address_base
from webapp.mail.summary import format_address, summarize


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
        build_message(
            sender="a@example.com",
            to="b@example.com",
            subject="Hi\r\nBcc: x@example.com",
            body="",
            message_id_domain="casemail.test",
        )


def test_built_reply_threads_to_the_original():
    message = build_message(
        sender="a@example.com",
        to="b@example.com",
        subject="Re: x",
        body="ok",
        message_id_domain="casemail.test",
        in_reply_to="<2@x>",
        references="<1@x>",
    )
    assert message["In-Reply-To"] == "<2@x>"
    assert message["References"] == "<1@x> <2@x>"
    assert message["Message-ID"].endswith("@casemail.test>")


def test_display_names_cannot_carry_line_breaks():
    assert "\n" not in format_address("Evil\r\nBcc: x@example.com", "a@example.com")


def test_small_helpers():
    assert reply_subject("Re: hello") == "Re: hello"
    assert reply_subject("hello") == "Re: hello"
    assert quote("a\n\nb") == "> a\n>\n> b"
    assert address_base("Support+EXP-1@Casemail.test") == "support@casemail.test"
