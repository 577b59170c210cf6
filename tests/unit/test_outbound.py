import dataclasses
import re
from datetime import UTC, datetime

import pytest

from webapp.mail.correlate import find_reply_tokens, new_reply_token, plus_address
from webapp.mail.outbound import (
    HeaderValueError,
    OutboundAttachment,
    OutboundError,
    OutboundSpec,
    build_outbound,
    message_bytes,
)
from webapp.mail.parse import parse_message

TOKEN = "mnqxgzlnmfuwyllhn5wgizloee"
INJECTION = "x\r\nBcc: eve@attacker.test"
BREAKS = ["\r\n", "\n", "\r", "\x00", "\x0b", "\x85", "\u2028"]

SPEC = OutboundSpec(
    from_address="approvals@casemail.test",
    from_name="Casemail Approvals",
    to=("Paula Requester <paula@example.test>",),
    subject="[EXP-1042] Approval needed",
    text="Reply with APPROVE or REJECT on the first line.\n",
    message_id_domain="casemail.test",
)


def _build(**changes) -> bytes:
    return message_bytes(build_outbound(dataclasses.replace(SPEC, **changes)))


def _assert_no_injected_header(raw: bytes) -> None:
    parsed = parse_message(raw)
    assert parsed.header("Bcc") is None
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\nBcc:" not in head
    assert b"\x00" not in raw


def test_round_trip_keeps_what_the_reader_sees():
    subject = (
        "[EXP-1042] Genehmigung erforderlich: Reisekostenabrechnung für März → "
        "Zoë Ångström, Köln → München, mit Hotel und Bahnfahrt (2. Klasse) 日本語"
    )
    raw = _build(
        from_name="Zoë Approvals, Finance",
        to=("Jörg Müller <jorg@example.test>", "b@example.test"),
        cc=('"Smith, Ann" <ann@example.test>',),
        reply_to=plus_address("approvals@casemail.test", TOKEN),
        subject=subject,
        text="Grüße,\nthe approvals desk\n",
        in_reply_to="<request-1@mail.example.test>",
        references=("<start@mail.example.test>",),
        token=TOKEN,
        case_id="EXP-1042",
        date=datetime(2026, 3, 1, 9, 30, tzinfo=UTC),
    )
    parsed = parse_message(raw)
    assert parsed.subject == subject
    assert parsed.from_addresses == (("Zoë Approvals, Finance", "approvals@casemail.test"),)
    assert parsed.from_well_formed
    assert parsed.to == (("Jörg Müller", "jorg@example.test"), ("", "b@example.test"))
    assert parsed.cc == (("Smith, Ann", "ann@example.test"),)
    assert parsed.reply_to == (("", f"approvals+{TOKEN}@casemail.test"),)
    assert parsed.in_reply_to == "<request-1@mail.example.test>"
    assert parsed.references == ("<start@mail.example.test>", "<request-1@mail.example.test>")
    assert parsed.text == "Grüße,\nthe approvals desk\n"
    assert parsed.header("X-Casemail-Token") == TOKEN
    assert parsed.header("X-Casemail-Case") == "EXP-1042"
    assert parsed.date == datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    assert parsed.content_type == "text/plain"
    assert parsed.notes == ()


def test_bytes_are_crlf_seven_bit_and_short_lined():
    raw = _build(
        subject="Sehr langer Betreff " * 12,
        text="Zeile mit Leerzeichen am Ende   \r\nbare CR\rthen LF\n" + "ä" * 500 + "\n",
        attachments=(OutboundAttachment("data.bin", "application/octet-stream", bytes(3000)),),
    )
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    parsed = parse_message(raw)
    assert parsed.text == "Zeile mit Leerzeichen am Ende   \nbare CR\nthen LF\n" + "ä" * 500 + "\n"


def test_message_id_is_fresh_with_our_domain_unless_given():
    first = parse_message(_build()).message_id
    second = parse_message(_build()).message_id
    assert first != second
    assert re.fullmatch(r"<[^<>@]+@casemail\.test>", first or "")
    given = "<outbox-17@casemail.test>"
    assert parse_message(_build(message_id=given)).message_id == given


def test_references_end_with_the_message_answered_once():
    parsed = parse_message(
        _build(in_reply_to="<b@x.test>", references=("<b@x.test>", "<a@x.test>", "<a@x.test>"))
    )
    assert parsed.references == ("<a@x.test>", "<b@x.test>")


def test_reply_without_references_threads_on_in_reply_to():
    parsed = parse_message(_build(in_reply_to="<b@x.test>"))
    assert parsed.in_reply_to == "<b@x.test>"
    assert parsed.references == ("<b@x.test>",)
    assert parse_message(_build()).header("References") is None


def test_automatic_messages_say_so_and_others_do_not():
    automatic = parse_message(_build(automatic=True))
    assert automatic.header("Auto-Submitted") == "auto-generated"
    assert automatic.header("X-Auto-Response-Suppress") == "All"
    assert automatic.header("Precedence") is None
    manual = parse_message(_build())
    assert manual.automatic_headers == ()


def test_reply_token_round_trips_through_a_reply_to_the_reply_to_address():
    token = new_reply_token()
    raw = _build(reply_to=plus_address("approvals@casemail.test", token), token=token)
    sent = parse_message(raw)
    reply = (
        f"From: paula@example.test\r\nTo: {sent.reply_to[0][1]}\r\n"
        f"Subject: Re: {sent.subject}\r\nIn-Reply-To: {sent.message_id}\r\n\r\nAPPROVE\r\n"
    ).encode()
    assert find_reply_tokens(parse_message(reply)) == [(token, f"recipient {sent.reply_to[0][1]}")]


def test_html_is_the_preferred_alternative():
    raw = _build(html="<p>Reply with <b>APPROVE</b></p>")
    parsed = parse_message(raw)
    assert parsed.content_type == "multipart/alternative"
    assert parsed.text == SPEC.text
    assert parsed.html == "<p>Reply with <b>APPROVE</b></p>\n"
    assert parsed.attachments == ()


def test_attachments_keep_names_types_and_bytes():
    pdf = b"%PDF-1.7\n" + bytes(range(256)) * 40
    raw = _build(
        html="<p>See attached</p>",
        attachments=(
            OutboundAttachment("Übersicht März 2026 → Reisekosten.pdf", "application/pdf", pdf),
            OutboundAttachment("notes.txt", "text/plain", "Grüße\n".encode()),
            OutboundAttachment("a" * 200 + ".csv", "text/csv", b"a,b\n"),
        ),
    )
    assert b"filename*" in raw  # RFC 2231, not a raw UTF-8 parameter
    parsed = parse_message(raw)
    assert parsed.content_type == "multipart/mixed"
    assert parsed.html == "<p>See attached</p>\n"
    names = [(a.filename, a.content_type, a.content) for a in parsed.attachments]
    assert names[0] == ("Übersicht März 2026 → Reisekosten.pdf", "application/pdf", pdf)
    assert names[1] == ("notes.txt", "text/plain", "Grüße\n".encode())
    assert names[2][0].endswith(".csv") and len(names[2][0]) == 150


def test_attached_email_travels_as_an_opaque_file():
    raw = _build(
        attachments=(OutboundAttachment("original.eml", "message/rfc822", b"Subject: x\r\n\r\nx"),)
    )
    (attachment,) = parse_message(raw).attachments
    assert (attachment.filename, attachment.content_type) == (
        "original.eml",
        "application/octet-stream",
    )
    assert attachment.content == b"Subject: x\r\n\r\nx"


def test_international_domains_are_sent_in_ascii():
    parsed = parse_message(_build(to=("Jörg <jorg@münchen.example.test>",)))
    assert parsed.to == (("Jörg", "jorg@xn--mnchen-3ya.example.test"),)


@pytest.mark.parametrize(
    "value",
    [
        "paula@example.test, eve@attacker.test",
        "paula@example.test eve@attacker.test",
        "friends: paula@example.test, eve@attacker.test;",
        "undisclosed-recipients:;",
        "paula@example.test@attacker.test",
        '"paula, eve"@example.test',
        "paula@[127.0.0.1]",
        "paula..x@example.test",
        "paula@-example.test",
        "paula@example..test",
        "paula",
        "Paula <>",
        "",
        "jörg@example.test",
        "x" * 65 + "@example.test",
    ],
)
def test_recipients_are_one_valid_address_each(value):
    with pytest.raises(HeaderValueError, match=r"^To .* is not a single valid email address"):
        _build(to=(value,))


def test_a_message_needs_a_recipient():
    with pytest.raises(OutboundError, match="at least one recipient"):
        _build(to=())
    assert parse_message(_build(to=(), cc=("c@example.test",))).cc == (("", "c@example.test"),)


def test_the_date_must_carry_a_time_zone():
    with pytest.raises(OutboundError, match="time zone"):
        _build(date=datetime(2026, 3, 1, 9, 30))


def test_from_address_takes_no_display_name():
    with pytest.raises(HeaderValueError, match=r"^From address"):
        _build(from_address="Eve <eve@attacker.test>")


# Header injection, one test per field. Refused fields name themselves in the error; display
# names and file names are cleaned to one line and the message is still sent.


@pytest.mark.parametrize("breaker", BREAKS)
def test_injection_in_from_address_is_refused(breaker):
    with pytest.raises(HeaderValueError, match=r"^From address"):
        _build(from_address=f"approvals@casemail.test{breaker}Bcc: eve@attacker.test")


@pytest.mark.parametrize("breaker", BREAKS)
def test_injection_in_from_name_is_neutralised(breaker):
    raw = _build(from_name=f"Approvals{breaker}Bcc: eve@attacker.test")
    _assert_no_injected_header(raw)
    parsed = parse_message(raw)
    assert parsed.from_addresses == (
        ("Approvals Bcc: eve@attacker.test", "approvals@casemail.test"),
    )
    assert parsed.from_well_formed


@pytest.mark.parametrize("breaker", BREAKS)
def test_injection_in_to_is_refused(breaker):
    with pytest.raises(HeaderValueError, match=r"^To "):
        _build(to=(f"paula@example.test{breaker}Bcc: eve@attacker.test",))


@pytest.mark.parametrize("breaker", BREAKS)
def test_injection_in_a_to_display_name_is_refused(breaker):
    with pytest.raises(HeaderValueError, match=r"^To "):
        _build(to=(f"Paula{breaker}Bcc: eve@attacker.test <paula@example.test>",))


@pytest.mark.parametrize("breaker", BREAKS)
def test_injection_in_cc_is_refused(breaker):
    with pytest.raises(HeaderValueError, match=r"^Cc "):
        _build(cc=(f"c@example.test{breaker}Bcc: eve@attacker.test",))


@pytest.mark.parametrize("breaker", BREAKS)
def test_injection_in_reply_to_is_refused(breaker):
    with pytest.raises(HeaderValueError, match=r"^Reply-To "):
        _build(reply_to=f"approvals@casemail.test{breaker}Bcc: eve@attacker.test")


@pytest.mark.parametrize("breaker", BREAKS)
def test_injection_in_subject_is_refused(breaker):
    # A subject built from an incoming message's subject is the likeliest carrier.
    with pytest.raises(HeaderValueError, match=r"^Subject must be a single line"):
        _build(subject=f"Re: Invoice{breaker}Bcc: eve@attacker.test")


def test_tabs_and_encoded_line_breaks_in_subject_stay_text():
    raw = _build(subject="Re:\tInvoice =?utf-8?q?x=0D=0ABcc:_eve@attacker.test?=")
    _assert_no_injected_header(raw)
    assert parse_message(raw).subject == "Re: Invoice =?utf-8?q?x=0D=0ABcc:_eve@attacker.test?="


@pytest.mark.parametrize("breaker", BREAKS)
def test_injection_in_attachment_filename_is_neutralised(breaker):
    name = f'report{breaker}Content-Disposition: inline{breaker}{breaker}<script>".pdf'
    raw = _build(attachments=(OutboundAttachment(name, "application/pdf", b"%PDF"),))
    _assert_no_injected_header(raw)
    (attachment,) = parse_message(raw).attachments
    assert attachment.content_type == "application/pdf"
    assert attachment.content == b"%PDF"
    assert "\n" not in attachment.filename and "\r" not in attachment.filename
    assert attachment.filename.startswith("report") and attachment.filename.endswith(".pdf")


@pytest.mark.parametrize(
    "content_type",
    ["application/pdf\r\nBcc: eve@attacker.test", "text/html; charset=x", "pdf", "a/b/c"],
)
def test_bad_attachment_content_type_is_refused(content_type):
    with pytest.raises(HeaderValueError, match=r"^Attachment content type"):
        _build(attachments=(OutboundAttachment("a.pdf", content_type, b"x"),))


@pytest.mark.parametrize(
    "domain", ["casemail.test\r\nBcc: eve@attacker.test", "casemail.test>", "a b", ""]
)
def test_bad_message_id_domain_is_refused(domain):
    with pytest.raises(HeaderValueError, match=r"^Message-ID domain"):
        _build(message_id_domain=domain)


@pytest.mark.parametrize(
    "value", ["<a@x.test>\r\nBcc: eve@attacker.test", "<a@x.test> <b@x.test>", "a@x.test", "<>"]
)
def test_bad_message_id_is_refused(value):
    with pytest.raises(HeaderValueError, match=r"^Message-ID "):
        _build(message_id=value)


@pytest.mark.parametrize("breaker", BREAKS)
def test_injection_in_in_reply_to_is_refused(breaker):
    with pytest.raises(HeaderValueError, match=r"^In-Reply-To "):
        _build(in_reply_to=f"<a@x.test>{breaker}Bcc: eve@attacker.test")


@pytest.mark.parametrize("breaker", BREAKS)
def test_injection_in_references_is_refused(breaker):
    with pytest.raises(HeaderValueError, match=r"^References "):
        _build(references=("<a@x.test>", f"<b@x.test>{breaker}Bcc: eve@attacker.test"))


def test_injection_in_token_is_refused():
    with pytest.raises(HeaderValueError, match=r"^X-Casemail-Token "):
        _build(token=f"{TOKEN}\r\nBcc: eve@attacker.test")


def test_injection_in_case_id_is_refused():
    with pytest.raises(HeaderValueError, match=r"^X-Casemail-Case "):
        _build(case_id="EXP-1\r\nBcc: eve@attacker.test")


@pytest.mark.parametrize(
    "name", ["X-Casemail-Outbox\r\nBcc", "Bcc", "X-Casemail-", "X-Casemail-Token", "X-Other"]
)
def test_extra_header_names_are_limited_to_ours(name):
    with pytest.raises(HeaderValueError, match=r"^Header name"):
        _build(extra_headers=((name, "1"),))


@pytest.mark.parametrize("breaker", BREAKS)
def test_injection_in_extra_header_value_is_refused(breaker):
    with pytest.raises(HeaderValueError, match=r"^X-Casemail-Outbox must be a single line"):
        _build(extra_headers=(("X-Casemail-Outbox", f"17{breaker}Bcc: eve@attacker.test"),))


def test_extra_headers_are_sent():
    parsed = parse_message(_build(extra_headers=(("X-Casemail-Outbox", "17"),)))
    assert parsed.header("X-Casemail-Outbox") == "17"


def test_body_text_cannot_add_headers():
    raw = _build(text=INJECTION, html=INJECTION)
    _assert_no_injected_header(raw)
    assert parse_message(raw).text == "x\nBcc: eve@attacker.test\n"


def test_long_display_names_stay_one_quoted_name():
    # Folded naively, the quotes around such a name are lost and it becomes two addresses.
    name = "Finance approvals (EMEA), Headquarters <eve@attacker.test>, eve@attacker.test"
    raw = _build(from_name=name, to=(f'"{name}" <paula@example.test>',))
    parsed = parse_message(raw)
    assert parsed.from_well_formed
    assert parsed.from_addresses == ((name, "approvals@casemail.test"),)
    assert parsed.to == ((name, "paula@example.test"),)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78


def test_text_that_looks_encoded_reads_back_as_typed():
    subject = "Re: =?utf-8?q?Gr=C3=BC=C3=9Fe?= and =?"
    parsed = parse_message(_build(subject=subject, from_name="=?utf-8?q?Eve?="))
    assert parsed.subject == subject
    assert parsed.from_addresses[0][0] == "=?utf-8?q?Eve?="


def test_long_words_in_a_subject_are_folded_not_cut():
    subject = "Ticket " + "x" * 200 + " done"
    raw = _build(subject=subject)
    assert parse_message(raw).subject == subject
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78


def test_undecodable_characters_are_refused_in_headers_and_replaced_elsewhere():
    with pytest.raises(HeaderValueError, match="Subject holds characters that are not valid"):
        _build(subject="Invoice \udc80")
    parsed = parse_message(
        _build(
            from_name="Approvals \udc80",
            text="Body \udc80\n",
            attachments=(OutboundAttachment("a\udc80.txt", "text/plain", b"x"),),
        )
    )
    assert parsed.from_addresses[0][0] == "Approvals \ufffd"
    assert parsed.text == "Body \ufffd\n"
    assert parsed.attachments[0].filename == "a\ufffd.txt"
