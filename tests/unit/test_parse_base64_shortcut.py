"""Large base64 bodies are set aside while parsing: the result must be the parse of the bytes."""

from __future__ import annotations

import base64
import random
from pathlib import Path

import pytest

from webapp.mail import parse

GOLDEN = sorted(Path(__file__).resolve().parents[1].glob("golden/**/*.eml"))
BODY = base64.encodebytes(random.Random(7).randbytes(20_000))


def _multipart(*parts: bytes, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    head = b"From: a@example.com\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
    head += b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n' + preamble
    body = b"".join(b"--XX\r\n" + part + b"\r\n" for part in parts)
    return head + body + b"--XX--\r\n" + epilogue


def _attachment(name: str, data: bytes = BODY) -> bytes:
    return (
        f'Content-Type: application/pdf; name="{name}"\r\n'.encode()
        + b"Content-Transfer-Encoding: base64\r\n"
        + f'Content-Disposition: attachment; filename="{name}"\r\n\r\n'.encode()
        + data.replace(b"\n", b"\r\n")
    )


TEXT = b"Content-Type: text/plain; charset=utf-8\r\n\r\nSee the files.\r\n"
CRAFTED = {
    "two attachments": _multipart(TEXT, _attachment("a.pdf"), _attachment("b.pdf")),
    "bare LF": _multipart(TEXT, _attachment("a.pdf")).replace(b"\r\n", b"\n"),
    "single part": (
        b"From: a@example.com\nContent-Type: application/pdf\n"
        b"Content-Transfer-Encoding: base64\n\n" + BODY
    ),
    "no final newline": (
        b"From: a@example.com\nContent-Type: application/pdf\n"
        b"Content-Transfer-Encoding: base64\n\n" + BODY.rstrip(b"\n")
    ),
    "placeholder typed in the text": _multipart(
        _attachment("a.pdf"), b"Content-Type: text/plain\r\n\r\nSee CasemailBase64Body0Z\r\n"
    ),
    "placeholder in the epilogue": _multipart(
        _attachment("a.pdf"), epilogue=b"CasemailBase64Body0Z\r\n"
    ),
    "base64 in the preamble": _multipart(
        _attachment("a.pdf"), preamble=b"base64 follows\r\n\r\n" + BODY + b"\r\n"
    ),
    "short body": _multipart(TEXT, _attachment("tiny.pdf", base64.encodebytes(b"x" * 90))),
    "body that is not base64": _multipart(
        TEXT, _attachment("odd.pdf", BODY[:6000] + b"not base64!\n" + BODY[6000:])
    ),
    "no padding needed": _multipart(_attachment("a.pdf", base64.encodebytes(b"y" * 30_000))),
    "two padded bodies run together": _multipart(
        _attachment("a.pdf", BODY + base64.encodebytes(b"tail" * 2_000 + b"!"))
    ),
    "padding missing": _multipart(_attachment("a.pdf", BODY.rstrip(b"=\n") + b"\n")),
    "too much padding": _multipart(_attachment("a.pdf", BODY.rstrip(b"\n") + b"==\n")),
    "a character short": _multipart(_attachment("a.pdf", BODY[:-3] + b"\n")),
    "padding after whole groups": _multipart(
        _attachment("a.pdf", base64.encodebytes(b"y" * 30_000).rstrip(b"\n") + b"=\n")
    ),
    "two padding characters where one is due": _multipart(
        _attachment("a.pdf", BODY.rstrip(b"\n") + b"=\n")
    ),
    "a long placeholder typed in the text": _multipart(
        _attachment("a.pdf"),
        b"Content-Type: text/plain\r\n\r\nCasemailBase64Body" + b"7" * 5_000 + b"Z\r\n",
    ),
    "encoding in capitals": _multipart(
        _attachment("a.pdf").replace(b"Encoding: base64", b"Encoding: BASE64")
    ),
    "encoding with a trailing space": _multipart(
        _attachment("a.pdf").replace(b"Encoding: base64", b"Encoding: base64 ")
    ),
}


def _parsed(raw: bytes, *, shortcut: bool, monkeypatch: pytest.MonkeyPatch) -> object:
    with monkeypatch.context() as patched:
        if not shortcut:
            patched.setattr(
                parse, "_parse_tree", lambda raw, *_: parse._bytes_parser.parsebytes(raw)
            )
        try:
            return parse.parse_message(raw)
        except parse.MessageStructureError as exc:
            return repr(exc)


@pytest.mark.parametrize(
    "raw",
    [path.read_bytes() for path in GOLDEN] + list(CRAFTED.values()),
    ids=[path.name for path in GOLDEN] + list(CRAFTED),
)
def test_the_shortcut_gives_what_parsing_the_bytes_gives(raw, monkeypatch):
    assert _parsed(raw, shortcut=True, monkeypatch=monkeypatch) == _parsed(
        raw, shortcut=False, monkeypatch=monkeypatch
    )


def test_large_attachments_are_set_aside_and_come_back_whole():
    raw = CRAFTED["two attachments"]
    skeleton, bodies = parse._set_aside_base64_bodies(raw)
    assert len(bodies) == 2 and len(skeleton) < len(raw) // 10
    message = parse.parse_message(raw)
    assert [a.content for a in message.attachments] == [base64.decodebytes(BODY)] * 2


@pytest.mark.parametrize("name", ["two attachments", "bare LF", "no padding needed"])
def test_well_formed_set_aside_bodies_are_decoded_from_their_bytes(name, monkeypatch):
    decoded: list[bytes] = []
    keep = parse._decode_set_aside

    def spy(part):
        result = keep(part)
        if result is not None:
            decoded.append(result)
        return result

    monkeypatch.setattr(parse, "_decode_set_aside", spy)
    message = parse.parse_message(CRAFTED[name])
    assert decoded and decoded == [a.content for a in message.attachments]


def test_boundary_text_inside_a_base64_body_does_not_count_as_parts():
    """Only headers declare boundaries: base64 text spelling "boundary=" over and over is an
    attachment's content, and is not taken for more MIME parts than the limit."""
    body = b"boundary" * 4 + b"\n"
    raw = _multipart(TEXT, _attachment("odd.pdf", body * 200))
    assert raw.count(b"oundary=") < parse.DEFAULT_MAX_PARTS  # as the body spells it: no "="
    raw = raw.replace(b"boundary" * 4, b"boundary=" * 4)
    assert raw.count(b"oundary=") > parse.DEFAULT_MAX_PARTS
    message = parse.parse_message(raw)
    assert [a.filename for a in message.attachments] == ["odd.pdf"]
    assert message.text.strip() == "See the files."


def test_a_typed_placeholder_makes_the_parser_read_the_bytes_as_they_are():
    raw = CRAFTED["placeholder typed in the text"]
    assert parse._set_aside_base64_bodies(raw)[1]  # the attachment would be set aside …
    message = parse.parse_message(raw)  # … but the typed text must stay as typed
    assert "See CasemailBase64Body0Z" in message.text
    assert message.attachments[0].content == base64.decodebytes(BODY)
