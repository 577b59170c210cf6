"""outbound_bytes writes plain-text messages itself: what a reader sees must not change.

Each case builds the same spec both ways. The header sections must be byte for byte those of
message_bytes(build_outbound(...)); both messages must parse (email.policy.default) to the same
headers and body, be 7-bit with CRLF line ends and short lines; a refused spec must be refused
by both with the same error.
"""

import dataclasses
import random
import re
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default

import pytest

from webapp.mail.correlate import plus_address
from webapp.mail.outbound import (
    HeaderValueError,
    OutboundAttachment,
    OutboundError,
    OutboundSpec,
    build_outbound,
    message_bytes,
    outbound_bytes,
)

TOKEN = "mnqxgzlnmfuwyllhn5wgizloee"
BREAKS = ["\r\n", "\n", "\r", "\x00", "\x0b", "\x85", "\u2028"]
INJECTED = "Bcc: eve@attacker.test"

SPEC = OutboundSpec(
    from_address="approvals@casemail.test",
    from_name="Casemail Approvals",
    to=("Paula Requester <paula@example.test>",),
    reply_to=plus_address("approvals@casemail.test", TOKEN),
    subject="[EXP-1042] Approval needed",
    text="Reply with APPROVE or REJECT on the first line.\n",
    message_id_domain="casemail.test",
    message_id="<outbox-17.1795253944@casemail.test>",
    in_reply_to="<request-1@mail.example.test>",
    references=("<start@mail.example.test>",),
    automatic=True,
    token=TOKEN,
    case_id="EXP-1042",
    date=datetime(2026, 3, 1, 9, 30, tzinfo=UTC),
)


def _parsed(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw, policy=default)
    assert isinstance(message, EmailMessage)
    return message


def _read(raw: bytes) -> tuple[list[tuple[str, str]], str]:
    message = _parsed(raw)
    return [(name, str(value)) for name, value in message.items()], message.get_content()


def _assert_wire_format(raw: bytes) -> None:
    assert raw.isascii()
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\x00" not in raw
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert all(len(line) <= 78 for line in body.split(b"\r\n"))


def _assert_same(spec: OutboundSpec) -> bytes:
    """Both ways of writing `spec` agree; returns the fast bytes."""
    fast = outbound_bytes(spec)
    slow = message_bytes(build_outbound(spec))
    _assert_wire_format(fast)
    assert fast.split(b"\r\n\r\n", 1)[0] == slow.split(b"\r\n\r\n", 1)[0]
    assert _read(fast) == _read(slow)
    assert not _parsed(fast).defects
    return fast


def _assert_same_refusal(spec: OutboundSpec) -> str:
    with pytest.raises((HeaderValueError, OutboundError)) as slow:
        build_outbound(spec)
    with pytest.raises(type(slow.value)) as fast:
        outbound_bytes(spec)
    assert str(fast.value) == str(slow.value)
    return str(fast.value)


def _spec(**changes) -> OutboundSpec:
    return dataclasses.replace(SPEC, **changes)


LONG_NAME = "Finance approvals (EMEA), Headquarters <eve@attacker.test>, eve@attacker.test"


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"automatic": False, "token": None, "case_id": None, "reply_to": None},
        {"in_reply_to": None, "references": ()},
        {"subject": "Grüße aus München: Reisekosten für März"},
        {
            "subject": "[EXP-1042] Genehmigung erforderlich: Reisekostenabrechnung für März → "
            "Zoë Ångström, Köln → München, mit Hotel und Bahnfahrt (2. Klasse) 日本語"
        },
        {"subject": "Approval needed for the travel expenses of the whole finance team " * 3},
        {"subject": "x" * 69},
        {"subject": "x" * 70},
        {"subject": "Approval needed for the travel expenses of the finance team in May"},
        {"subject": "Approval needed for the travel expenses of the finance team in Madrid"},
        {"subject": "Approval needed for the travel expenses of the finance team in Madrid!!"},
        {"subject": "Approval needed for the travel expenses of the whole team at the end"},
        {"subject": "a" * 69 + " bbb"},
        {"subject": " ".join(["x" * 33, "y" * 34, "z" * 10])},
        {"subject": "Ticket " + "x" * 200 + " done"},
        {"subject": ""},
        {"subject": " leading and trailing "},
        {"subject": "Re:\tInvoice  with  double  spaces"},
        {"subject": "Re:\tInvoice  with  double  spaces,\ttabs and a long text " * 3},
        {"subject": "\tword" * 20},
        {"subject": "Re: =?utf-8?q?Gr=C3=BC=C3=9Fe?= and =?"},
        {"subject": "Re:\tInvoice =?utf-8?q?x=0D=0ABcc:_eve@attacker.test?="},
        {"subject": "😀 " * 40},
        {"from_name": ""},
        {"from_name": "Zoë Approvals, Finance"},
        {"from_name": 'Approvals "Desk" \\ Finance'},
        {"from_name": "=?utf-8?q?Eve?="},
        {"from_name": LONG_NAME, "to": (f'"{LONG_NAME}" <paula@example.test>',)},
        {"from_name": f"Approvals{BREAKS[0]}{INJECTED}"},
        {"from_name": "Approvals \udc80"},
        {
            "to": ("Jörg Müller <jorg@example.test>", "b@example.test", "C <c@example.test>"),
            "cc": ('"Smith, Ann" <ann@example.test>', "d@example.test"),
        },
        {"to": (), "cc": ("c@example.test",)},
        {"to": ("Jörg <jorg@münchen.example.test>",)},
        {"to": ('"a\\"b" <ab@example.test>',)},
        {"to": ('"tab\there" <t@example.test>',)},
        {"references": tuple(f"<id-{n}.abcdefgh@mail.example.test>" for n in range(12))},
        {"references": ("<P+HUk-po@x>", "<" + "i" * 50 + "@mail.example.test>")},
        {"references": ("<" + "r" * 120 + "@mail.example.test>",)},
        {"references": ("<a=?utf-8?q?x?=@mail.example.test>",), "in_reply_to": "<b=?x@y.test>"},
        {"in_reply_to": "<" + "i" * 90 + "@mail.example.test>"},
        {"message_id": "<" + "m" * 100 + "@casemail.test>"},
        {"message_id": "<" + "m" * 53 + "@casemail.test>"},
        {"message_id": "<" + "m" * 54 + "@casemail.test>"},
        {"message_id": "<" + "m" * 61 + "@casemail.test>"},
        {"message_id": "<" + "m" * 62 + "@casemail.test>"},
        {"message_id": "<=?utf-8?q?x?=@casemail.test>"},
        {"message_id": "<a.=?utf-8?b?QQ==?=." + "m" * 40 + "@casemail.test>"},
        {"message_id": " <padded@casemail.test> "},
        {"message_id_domain": "München.example.test."},
        {"case_id": "A" * 64},
        {"extra_headers": (("X-Casemail-Outbox", "17"), ("x-casemail-kind", "Stufe: Prüfung"))},
        {"extra_headers": (("X-Casemail-" + "Long-" * 9 + "Name", "a value " * 20),)},
        {"extra_headers": (("X-Casemail-" + "L" * 53, "words " * 20 + "end"),)},
        {"extra_headers": (("X-Casemail-" + "L" * 53, ""),)},
        {"extra_headers": (("X-Casemail-Note", "=?utf-8?b?QQ==?="),)},
        {"date": datetime(2026, 3, 1, 9, 30, 59, 999, tzinfo=timezone(timedelta(hours=5.5)))},
        {"date": datetime(1999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-9)))},
        {"date": datetime(99, 1, 1, tzinfo=UTC)},
        {"date": datetime(2026, 3, 1, tzinfo=timezone(timedelta(seconds=90)))},
    ],
)
def test_headers_are_those_of_the_library_path(changes):
    _assert_same(_spec(**changes))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no line break at the end",
        "\n\n\n",
        "trailing spaces   \ntrailing tab\t\n",
        ".\n..\nFrom the desk\n.",
        "a=b =?utf-8?q?x?= 100% = 1\n",
        "x" * 500 + "\n" + "y " * 300,
        "ä" * 400,
        "Grüße,\r\nthe desk\rbare CR\x00NUL\x0bVT\x0cFF\n",
        "tab\tin\tthe\tmiddle\n\tand at the start",
        "Body \udc80\n",
        "日本語のテキスト 😀 " * 30,
        "x\r\nBcc: eve@attacker.test\r\n\r\n<script>",
    ],
)
def test_bodies_read_the_same(text):
    raw = _assert_same(_spec(text=text))
    assert b"Content-Transfer-Encoding: quoted-printable\r\n" in raw
    assert _parsed(raw)["Content-Type"] == 'text/plain; charset="utf-8"'


@pytest.mark.parametrize("domain", ["casemail.test", "m" * 63 + ".casemail.test"])
def test_a_fresh_message_id_is_made_with_our_domain(domain):
    spec = _spec(message_id=None, message_id_domain=domain)
    fast, slow = outbound_bytes(spec), message_bytes(build_outbound(spec))
    fast_id, slow_id = str(_parsed(fast)["Message-ID"]), str(_parsed(slow)["Message-ID"])
    assert fast_id != slow_id
    assert re.fullmatch(rf"<[^<>@]+@{re.escape(domain)}>", fast_id)
    head = fast.split(b"\r\n\r\n", 1)[0]
    assert head.replace(fast_id.encode(), slow_id.encode()) == slow.split(b"\r\n\r\n", 1)[0]


def test_messages_with_html_or_attachments_go_the_library_way():
    spec = _spec(
        html="<p>Reply with <b>APPROVE</b></p>",
        attachments=(OutboundAttachment("Übersicht März.pdf", "application/pdf", b"%PDF-1.7"),),
    )
    message = _parsed(outbound_bytes(spec))
    assert message.get_content_type() == "multipart/mixed"
    body = message.get_body(("html",))
    assert body is not None
    assert body.get_content().splitlines() == ["<p>Reply with <b>APPROVE</b></p>"]
    (attachment,) = message.iter_attachments()
    assert attachment.get_filename() == "Übersicht März.pdf"
    assert attachment.get_content() == b"%PDF-1.7"


FIELD_BREAKS = [
    ("from_address", "approvals@casemail.test{b}" + INJECTED),
    ("to", "paula@example.test{b}" + INJECTED),
    ("to", "Paula{b}" + INJECTED + " <paula@example.test>"),
    ("cc", "c@example.test{b}" + INJECTED),
    ("reply_to", "approvals@casemail.test{b}" + INJECTED),
    ("subject", "Re: Invoice{b}" + INJECTED),
    ("message_id_domain", "casemail.test{b}" + INJECTED),
    ("message_id", "<a@x.test>{b}" + INJECTED),
    ("in_reply_to", "<a@x.test>{b}" + INJECTED),
    ("references", "<b@x.test>{b}" + INJECTED),
    ("token", TOKEN + "{b}" + INJECTED),
    ("case_id", "EXP-1{b}" + INJECTED),
    ("extra_headers", "17{b}" + INJECTED),
]


def _with_field(field: str, value: str) -> OutboundSpec:
    if field in ("to", "cc", "references"):
        return _spec(**{field: (value,)})
    if field == "extra_headers":
        return _spec(extra_headers=(("X-Casemail-Outbox", value),))
    return _spec(**{field: value})


@pytest.mark.parametrize("breaker", BREAKS)
@pytest.mark.parametrize(("field", "template"), FIELD_BREAKS)
def test_line_breaks_are_refused_the_same_way(field, template, breaker):
    _assert_same_refusal(_with_field(field, template.format(b=breaker)))


@pytest.mark.parametrize(
    "changes",
    [
        {"to": ("paula@example.test, eve@attacker.test",)},
        {"to": ("friends: paula@example.test, eve@attacker.test;",)},
        {"to": ('"paula, eve"@example.test',)},
        {"to": ("paula@[127.0.0.1]",)},
        {"to": ("jörg@example.test",)},
        {"to": ("",)},
        {"to": ('". " :>@\\ [[.;[" <to@example.test>',)},
        {"to": (), "cc": ()},
        {"from_address": "Eve <eve@attacker.test>"},
        {"subject": "Invoice \udc80"},
        {"date": datetime(2026, 3, 1, 9, 30)},
        {"message_id": "<a@x.test> <b@x.test>"},
        # Our own ids are dot-atoms, as make_msgid writes them. To the library a parenthesis
        # opens a comment: it rewrites such ids, the first even onto a line of its own that
        # readers take for another header.
        {
            "message_id": "<.p}2@gU9(K.\"PMJmQMc9!O[jGnM%'mE6([*XUp;afxj!2=}-fJykx&.{)*Qtza-?W|"
            "mVz0@Nq*Um{bE>"
        },
        {"message_id": "<a(b)@casemail.test>"},
        {"message_id": "<.p}2@gU9>"},
        {"message_id": "<no-at-sign>"},
        {"message_id_domain": "casemail.test>"},
        {"token": TOKEN + "\n"},
        {"token": TOKEN.upper()},
        {"case_id": "EXP 1"},
        {"extra_headers": (("Bcc", "x"),)},
        {"extra_headers": (("X-Casemail-Token", TOKEN),)},
        {"extra_headers": (("X-Casemail-" + "L" * 54, "1"),)},
        # Several faults: the first in the order build_outbound checks them is named.
        {"to": ("bad",), "subject": "x\ny", "token": "bad"},
        {"subject": "x\ny", "message_id": "bad"},
    ],
)
def test_refusals_are_the_same(changes):
    _assert_same_refusal(_spec(**changes))


def test_a_token_with_a_final_line_break_is_refused():
    # A pattern ending in "$" accepts one; written out it would end the header section early.
    message = _assert_same_refusal(_spec(token=TOKEN + "\n"))
    assert message.startswith("X-Casemail-Token ")


def test_an_address_checked_once_is_still_checked_for_each_field():
    named = "Paula Requester <paula@example.test>"
    assert _parsed(_assert_same(_spec(to=(named,))))["To"] == named
    with pytest.raises(HeaderValueError, match=r"^From address 'Paula Requester"):
        outbound_bytes(_spec(from_address=named))
    for _ in range(2):
        with pytest.raises(HeaderValueError, match=r"^Cc 'paula@example.test, eve"):
            outbound_bytes(_spec(cc=("paula@example.test, eve@attacker.test",)))


ALPHABET = (
    "abcdefghijklmnopqrstuvwxyz ABCXYZ 0123456789      .,;:!?'\"()<>[]@\\=_-/%+\t"
    "äöüßéñçÅØ€→日本語😀"
)
PIECES = ["=?", "?=", "=?utf-8?q?x?=", "=?utf-8?b?QQ==?=", "\n", " " * 3, "x" * 80, "=20", "."]


def _random_text(rng: random.Random, longest: int) -> str:
    parts = []
    for _ in range(rng.randint(0, longest)):
        parts.append(rng.choice(PIECES) if rng.random() < 0.05 else rng.choice(ALPHABET))
    return "".join(parts)


MSGID_TEXT = "".join(chr(code) for code in range(0x21, 0x7F) if chr(code) not in "<>")


def _random_id(rng: random.Random) -> str:
    return "<" + "".join(rng.choice(MSGID_TEXT) for _ in range(rng.randint(1, 90))) + ">"


def test_random_specs_agree():
    rng = random.Random(20261121)
    refused = 0
    for _ in range(300):
        names = [_random_text(rng, 40).replace('"', "").replace("\\", "") for _ in range(3)]
        spec = _spec(
            from_name=_random_text(rng, 60),
            to=(f'"{names[0]}" <to{rng.randint(0, 9)}@example.test>', "b@example.test")[
                : rng.randint(1, 2)
            ],
            cc=tuple(f'"{name}" <cc@example.test>' for name in names[1:] if rng.random() < 0.5),
            subject=_random_text(rng, 160).replace("\n", " "),
            text=_random_text(rng, 800),
            message_id=_random_id(rng) if rng.random() < 0.3 else SPEC.message_id,
            in_reply_to=_random_id(rng) if rng.random() < 0.5 else None,
            references=tuple(_random_id(rng) for _ in range(rng.randint(0, 8))),
            extra_headers=(("X-Casemail-Note", _random_text(rng, 80).replace("\n", " ")),),
            date=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randint(0, 10**9)),
        )
        try:
            build_outbound(spec)
        except (HeaderValueError, OutboundError):
            refused += 1
            _assert_same_refusal(spec)
        else:
            _assert_same(spec)
    # The loop must exercise both outcomes to prove anything.
    assert 20 < refused < 200
