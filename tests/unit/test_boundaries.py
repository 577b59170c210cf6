"""Boundaries matched without compiling: the same lines, groups and MIME trees as the standard
library's own expression."""

from __future__ import annotations

import email.feedparser
import re
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from bench.ingest import build_messages
from webapp.mail import boundaries

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
SEPARATORS = ["--simple", "--=_Part_0_1234.5678", "--(a+b)?*[x]", "--with space", "--a\\b", "--"]
LINES = [
    "{s}\r\n",
    "{s}\n",
    "{s}\r",
    "{s}",
    "{s}--\r\n",
    "{s}--",
    "{s}  \t\r\n",
    "{s}--  \n",
    "{s}x\r\n",
    "{s} tail\n",
    "x{s}\r\n",
    "{s}---\r\n",
    "{s}\n\n",
    "",
    "\r\n",
]


def _stdlib(separator: str) -> re.Pattern[str]:
    return re.compile(
        "(?P<sep>" + re.escape(separator) + r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"
    )


@pytest.mark.parametrize("separator", SEPARATORS)
def test_a_boundary_matches_the_lines_the_expression_matches(separator):
    expected = _stdlib(separator)
    boundary = boundaries.boundary_for(expected.pattern)
    assert boundary is not None
    for template in LINES:
        line = template.format(s=separator)
        want, got = expected.match(line), boundary.match(line)
        assert (want is None) == (got is None), line
        if want is not None and got is not None:
            for group in ("end", "ws", "linesep"):
                assert want.group(group) == got.group(group), (line, group)


def test_other_expressions_are_compiled_as_before():
    assert boundaries.boundary_for(r"(?P<sep>--a)(?P<end>--)?$") is None
    assert boundaries.boundary_for(_stdlib("--a.b").pattern.replace(r"\.", ".")) is None
    boundaries.install()
    shim = email.feedparser.re
    assert isinstance(shim.compile(r"\r\n|\n"), re.Pattern)
    assert shim.escape("a.b") == re.escape("a.b")


def _tree(raw: bytes) -> list[tuple[object, ...]]:
    message = message_from_bytes(raw, policy=policy.compat32)
    return [
        (
            part.get_content_type(),
            part.get_payload(decode=True),
            part.preamble,
            part.epilogue,
            [type(d).__name__ for d in part.defects],
        )
        for part in message.walk()
    ]


def test_the_feed_parser_builds_the_same_trees(monkeypatch):
    raws = [p.read_bytes() for p in sorted(GOLDEN.rglob("*.eml"))] + build_messages(60)
    boundaries.install()
    assert email.feedparser.re is not re  # the matching without compiling is in use
    with_boundaries = [_tree(raw) for raw in raws]
    monkeypatch.setattr(email.feedparser, "re", re)
    assert [_tree(raw) for raw in raws] == with_boundaries
