from pathlib import Path

import pytest

from webapp.mail.parse import parse_message
from webapp.mail.sanitize import sanitize_html


def _inline(content_id: str) -> str | None:
    return f"/cases/7/inline/{content_id}" if content_id == "logo@x" else None


@pytest.mark.parametrize(
    "markup",
    [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        '<a href="javascript:alert(1)">x</a>',
        '<iframe src="https://evil.example"></iframe>',
        '<form action="https://evil.example"><input name=p></form>',
        "<style>body{background:url(https://t.example/p)}</style>",
        '<p style="background:url(https://t.example/p)">x</p>',
        '<object data="x.swf"></object><embed src="x">',
        '<meta http-equiv="refresh" content="0;url=https://evil.example">',
        '<svg onload="alert(1)"></svg>',
    ],
)
def test_active_content_is_removed(markup):
    cleaned = sanitize_html(markup).lower()
    for needle in (
        "script",
        "onerror",
        "onload",
        "javascript",
        "iframe",
        "<form",
        "style",
        "evil",
        "t.example",
        "object",
        "embed",
        "meta",
    ):
        assert needle not in cleaned


def test_cid_images_are_rewritten_and_unknown_cids_dropped():
    cleaned = sanitize_html(
        '<img src="cid:logo@x" alt="logo"><img src="cid:&lt;unknown@x&gt;"><img src="cid:">',
        cid_url=_inline,
    )
    assert cleaned == '<img src="/cases/7/inline/logo@x" alt="logo"><img><img>'


def test_remote_images_are_blocked_unless_allowed():
    markup = '<img src="https://tracker.example/p.gif" alt="t">'
    assert sanitize_html(markup) == '<img alt="t">'
    assert sanitize_html(markup, allow_remote_images=True) == (
        '<img src="https://tracker.example/p.gif" alt="t">'
    )


def test_relative_urls_in_the_email_are_dropped_even_if_they_look_like_ours():
    cleaned = sanitize_html(
        '<img src="/cases/7/inline/logo@x"><a href="/admin">x</a>', cid_url=_inline
    )
    assert "/cases" not in cleaned
    assert "/admin" not in cleaned


def test_links_open_in_a_new_tab_without_referrer():
    assert sanitize_html('<a href="https://example.com/x">x</a>') == (
        '<a href="https://example.com/x" target="_blank" rel="noopener noreferrer">x</a>'
    )


def test_formatting_and_tables_survive():
    markup = '<table><tr><td colspan="2"><b>Total</b></td></tr></table><blockquote>q</blockquote>'
    assert sanitize_html(markup) == markup.replace("<tr>", "<tbody><tr>").replace(
        "</table>", "</tbody></table>"
    )


def test_a_received_html_body_shows_its_inline_image_and_nothing_active():
    raw = (Path(__file__).parent.parent / "golden/inbound/inline_image_related.eml").read_bytes()
    message = parse_message(raw)
    known = {a.content_id for a in message.attachments if a.content_id}
    cleaned = sanitize_html(
        message.html, cid_url=lambda cid: f"/inbound/3/inline/{cid}" if cid in known else None
    )
    assert cleaned == (
        "<p>Receipt attached below.</p>"
        '<img src="/inbound/3/inline/logo.png@example.org" alt="logo">\n'
    )
