import contextlib
import email.policy
import random
from pathlib import Path

import pytest

from webapp.mail.parse import (
    _SIMPLE_ADDRESS_RE,
    MessageStructureError,
    decode_bytes,
    decode_header,
    html_to_text,
    parse_message,
    sanitize_filename,
)

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def _message(body: str, **headers: str) -> bytes:
    head = {"From": "Maria <maria@example.com>", "To": "expenses@casemail.test", **headers}
    lines = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in head.items())
    return (lines + "\r\n" + body).encode("utf-8")


def test_threading_headers_are_read_as_message_ids():
    parsed = parse_message(
        _message(
            "hi",
            Message_ID="<new@example.com>",
            In_Reply_To="Your message of Friday <old@casemail.test>",
            References="<first@casemail.test>\r\n <old@casemail.test>",
        )
    )
    assert parsed.message_id == "<new@example.com>"
    assert parsed.in_reply_to == "<old@casemail.test>"
    assert parsed.references == ("<first@casemail.test>", "<old@casemail.test>")


def test_a_message_id_without_brackets_is_still_recognised():
    assert parse_message(_message("x", Message_ID="bare@example.com")).message_id == (
        "<bare@example.com>"
    )


def test_sender_is_given_only_for_exactly_one_well_formed_address():
    assert parse_message(_message("x")).sender == "maria@example.com"
    for value in (
        "a@example.com, b@example.com",
        "alice@example.org)<bob@example.org>",
        "not an address",
        "<>",
        "Alice <alice@example.com",
    ):
        parsed = parse_message(_message("x", From=value))
        assert parsed.sender is None, value
        assert not parsed.from_well_formed


def test_addresses_hold_no_control_character_nor_bytes_that_are_not_text():
    def parsed(header: bytes):
        return parse_message(header + b"\r\nTo: b\x00@x.test, c@x.test\r\n\r\nHi\r\n")

    for header in (
        b"From: ali\x00ce@example.com",
        b"From: =?utf-8?q?x?= <=?utf-8?q?a=00?=@example.com>",
        b"From: =?utf-8?b?////?=",
        b"From: =?x?q?y?= <=?utf-8?b?/w==?=@example.com>",
    ):
        message = parsed(header)
        assert (message.from_addresses, message.sender) == ((), None), header
        assert message.to == (("", "c@x.test"),)
    named = parsed(b"From: =?utf-8?b?////?= Ann =?utf-8?q?B=01C?= <ann@example.com>")
    assert named.from_addresses == (("\ufffd\ufffd\ufffd Ann B C", "ann@example.com"),)


@pytest.mark.parametrize(
    ("headers", "name"),
    [
        (
            'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="März.pdf"',
            "März.pdf",
        ),
        ('Content-Type: application/pdf; name="Angebot für José.pdf"', "Angebot für José.pdf"),
    ],
)
def test_an_attachment_name_in_raw_utf8_keeps_its_letters(headers: str, name: str):
    # Not RFC 2231 nor an encoded word, but what many mailers send.
    raw = (
        "From: a@example.com\r\nSubject: x\r\nContent-Type: multipart/mixed; boundary=XX\r\n"
        "\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhi\r\n--XX\r\n"
        f"{headers}\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n--XX--\r\n"
    ).encode()
    assert [a.filename for a in parse_message(raw).attachments] == [name]


@pytest.mark.parametrize(
    "charset",
    [
        "zlib",
        "uu",
        "bz2",
        "hex",
        "rot13",
        "base64",
        "punycode",
        "idna",
        "unicode_escape",
        "undefined",
    ],
)
def test_a_codec_that_is_no_charset_is_read_as_an_unknown_charset(charset: str):
    raw = (
        f"From: a@example.com\r\nSubject: =?{charset}?q?Hotel?=\r\n"
        f"Content-Type: text/plain; charset={charset}\r\n\r\nH\xf4tel \xe9t\xe9\r\n"
    ).encode("latin-1")
    parsed = parse_message(raw)
    assert (parsed.subject, parsed.text.strip()) == ("Hotel", "Hôtel été")


def test_utf7_that_decodes_to_a_lone_surrogate_gives_a_replacement_character():
    # No database stores a lone surrogate: the message would fail to be written.
    raw = (
        b"From: a@example.com\r\nSubject: =?utf-7?Q?hi+2D0-?=\r\n"
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
        b"Content-Type: text/plain; charset=utf-7\r\n\r\nbody +2D0-\r\n--XX\r\n"
        b"Content-Type: application/pdf; name==?utf-7?Q?f+2D0-.pdf?=\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n--XX--\r\n"
    )
    parsed = parse_message(raw)
    assert (parsed.subject, parsed.text.strip()) == ("hi\ufffd", "body \ufffd")
    assert [a.filename for a in parsed.attachments] == ["f\ufffd.pdf"]


def test_recipients_include_envelope_headers():
    parsed = parse_message(
        _message(
            "x",
            Cc="Bob <bob@example.com>",
            Delivered_To="Approvals+Tok@Casemail.test",
            X_Original_To="other@casemail.test",
        )
    )
    assert parsed.recipients == (
        "expenses@casemail.test",
        "bob@example.com",
        "approvals+tok@casemail.test",
        "other@casemail.test",
    )


def test_dates_without_a_zone_are_taken_as_utc_and_bad_dates_are_none():
    date = parse_message(_message("x", Date="Sat, 21 Nov 2026 09:00:00 -0000")).date
    assert date is not None
    assert date.isoformat() == "2026-11-21T09:00:00+00:00"
    assert parse_message(_message("x", Date="yesterday")).date is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=?iso-8859-1?q?caf=E9?=", "café"),
        ("=?utf-8?b?8J+Y?= =?utf-8?b?gA==?=", "😀"),  # one character split over two words
        ("=?utf-8?q?a?=  =?utf-8?q?b?=", "ab"),
        ("=?utf-8?q?a?= x =?utf-8?q?b?=", "a x b"),
        ("=?bogus-charset?q?caf=C3=A9?=", "café"),
        ("=?utf-8?q?caf=E9?=", "café"),  # utf-8 label on cp1252 bytes
        ("=?utf-8?b?YWJj?=", "abc"),  # missing padding
        ("=?utf-8?q?never closed", "=?utf-8?q?never closed"),
        ("plain\r\n folded", "plain folded"),
        ("=?utf-8?b?AEE=?=", "A"),  # NUL dropped
    ],
)
def test_header_decoding_tolerates_broken_encoded_words(value, expected):
    assert decode_header(value) == expected


def test_raw_8bit_headers_are_guessed():
    raw = "From: René <rene@example.fr>\r\nSubject: Reçu\r\n\r\nx".encode("latin-1")
    parsed = parse_message(raw)
    assert parsed.subject == "Reçu"
    assert parsed.from_addresses == (("René", "rene@example.fr"),)


@pytest.mark.parametrize(
    ("data", "declared", "text"),
    [
        ("grüße".encode(), "utf-8", "grüße"),
        ("grüße".encode("latin-1"), None, "grüße"),
        ("grüße".encode(), None, "grüße"),
        ("€5".encode("cp1252"), "iso-8859-1", "€5"),
        ("日本語".encode("iso2022_jp"), "ISO-2022-JP", "日本語"),
        ("ｶﾀｶﾅ".encode("iso2022_jp_ext"), "iso-2022-jp", "ｶﾀｶﾅ"),
        ("日本語".encode("cp932"), "shift_jis", "日本語"),
        (b"ok", "base64", "ok"),  # a codec name that is not a charset
    ],
)
def test_body_charsets(data, declared, text):
    assert decode_bytes(data, declared)[0] == text


def test_unknown_charsets_are_noted():
    text, note = decode_bytes("å".encode(), "x-klingon")
    assert text == "å"
    assert note == "unknown charset 'x-klingon'; read as utf-8"


def test_html_only_messages_get_a_text_body_with_quotes_marked():
    raw = _message(
        "<p>Yes&nbsp;please</p><script>bad()</script><blockquote>old<br>text</blockquote>",
        Content_Type="text/html; charset=utf-8",
    )
    parsed = parse_message(raw)
    assert parsed.text_from_html
    assert parsed.text == "Yes please\n\n> old\n> text"
    assert "<script>" in parsed.html  # kept as sent; sanitised where shown


def test_html_to_text_keeps_the_space_between_inline_elements():
    assert html_to_text("<b>From:</b> Casemail<br><b>Sent:</b>\n  Saturday<p>a <i>b</i>c</p>") == (
        "From: Casemail\nSent: Saturday\na bc"
    )


def test_html_to_text_keeps_list_items_and_preformatted_text():
    assert html_to_text("<ul><li>one</li><li>two</li></ul><pre>a  b\nc</pre>") == (
        "- one\n- two\n\na  b\nc"
    )


def test_attachments_keep_content_type_size_bytes_and_content_id():
    parsed = parse_message((GOLDEN / "inbound" / "inline_image_related.eml").read_bytes())
    (image,) = parsed.attachments
    assert image.content.startswith(b"\x89PNG")
    assert image.size == len(image.content)
    assert (image.content_id, image.disposition) == ("logo.png@example.org", "inline")


@pytest.mark.parametrize(
    ("name", "content_type", "expected"),
    [
        ("../../etc/passwd", "text/plain", "passwd"),
        ("C:\\Users\\ana\\report.pdf", "application/pdf", "report.pdf"),
        ("invoice\u202efdp.exe", "application/octet-stream", "invoicefdp.exe"),
        ("line\r\nbreak.txt", "text/plain", "line break.txt"),
        ("", "application/pdf", "attachment.pdf"),
        ("...", "application/x-unknown-thing", "attachment.bin"),
        ("a<b>c?.txt", "text/plain", "a_b_c_.txt"),
        ("nul.txt", "text/plain", "_nul.txt"),
        ("", "message/rfc822", "message.eml"),
    ],
)
def test_filenames_are_made_safe(name, content_type, expected):
    assert sanitize_filename(name, content_type) == expected


def test_long_filenames_keep_their_extension():
    name = sanitize_filename("x" * 400 + ".docx", "application/octet-stream")
    assert len(name) == 150
    assert name.endswith("x.docx")


def test_part_and_depth_limits_raise_a_structure_error():
    raw = (GOLDEN / "inbound" / "broken" / "absurd_nesting.eml").read_bytes()
    with pytest.raises(MessageStructureError, match="deeper than 20 levels"):
        parse_message(raw)
    assert parse_message(raw, max_depth=100).depth == 60  # the text part under 60 multiparts
    with pytest.raises(MessageStructureError, match="more than 3 MIME parts"):
        parse_message((GOLDEN / "inbound" / "inline_image_related.eml").read_bytes(), max_parts=3)


def test_nesting_beyond_the_parsers_stack_is_a_structure_error_not_a_crash():
    depth = 3000
    head = b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n"
    body = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i - 1, i)
        for i in range(1, depth)
    )
    with pytest.raises(MessageStructureError):
        parse_message(head + body, max_parts=10_000, max_depth=10_000)


def _mutations(seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    sources = [p.read_bytes() for p in sorted(GOLDEN.rglob("*.eml")) if p.stat().st_size < 20_000]
    out = []
    for _ in range(300):
        data = bytearray(rnd.choice(sources))
        for _ in range(rnd.randint(1, 12)):
            if not data:
                break
            position = rnd.randrange(len(data))
            kind = rnd.random()
            if kind < 0.4:
                data[position] = rnd.randrange(256)
            elif kind < 0.7:
                del data[position : position + rnd.randint(1, 200)]
            else:
                data[position:position] = rnd.choice(
                    [b"\r\n", b"--", b"=?", b"?=", b"<", b">", b"boundary=", b"\x00", b"\n\n"]
                )
        out.append(bytes(data))
    return out


def test_mutated_messages_never_raise_anything_but_a_structure_error():
    for raw in _mutations(1121):
        with contextlib.suppress(MessageStructureError):
            parse_message(raw)


@pytest.mark.parametrize(
    "value",
    [
        "Peter Lang <peter.lang@gmail.example>",
        '"Roth, Sabine" <sabine.roth@contoso.example>',
        "a@b.example",
        "<a@b.example>",
        "O'Brien <ob@x.example>",
        "  spaced   name   <a@b.example>  ",
        "Name<a@b.example>",
        "user+tag@ex.example",
        '"a\\"b" <a@b.example>',
        '"=?utf-8?q?x?=" <a@b.example>',
        "a..b@c.example",
        "John Q. Public <j@x.example>",
        "Name <a@b.example>, c@d.example",
        "<a@b.example> trailing",
        "Jürgen <j@x.example>",
    ],
)
def test_the_fast_from_path_agrees_with_the_strict_parser(value):
    strict = email.policy.default.header_factory("from", value)
    fast = _SIMPLE_ADDRESS_RE.match(value)
    if fast:
        assert not strict.defects
        (address,) = strict.addresses
        parsed = parse_message(f"From: {value}\r\n\r\n".encode())
        assert parsed.from_addresses == ((address.display_name, address.addr_spec),)
        assert parsed.from_well_formed
