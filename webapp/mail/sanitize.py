"""Making an email's HTML body safe to show inside a Casemail page (nh3 does the cleaning)."""

from __future__ import annotations

from collections.abc import Callable

import nh3

CidUrl = Callable[[str], str | None]

_TAGS = frozenset(
    (
        *("a", "abbr", "b", "blockquote", "br", "caption", "center", "cite", "code", "col"),
        *("colgroup", "dd", "del", "div", "dl", "dt", "em", "font", "h1", "h2", "h3", "h4"),
        *("h5", "h6", "hr", "i", "img", "ins", "li", "ol", "p", "pre", "q", "s", "small"),
        *("span", "strike", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th"),
        *("thead", "tr", "tt", "u", "ul"),
    )
)
# Layout attributes only: no style (the page's CSP refuses inline styles, and CSS can load
# remote images), no class or id (they would pick up the page's own styles and anchors).
_ATTRIBUTES = {
    "*": {"title", "dir", "lang", "align"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan", "valign", "width"},
    "th": {"colspan", "rowspan", "valign", "width", "scope"},
    "col": {"span", "width"},
    "colgroup": {"span", "width"},
    "table": {"width", "summary"},
    "ol": {"start", "type"},
    "font": {"color", "face", "size"},
    "blockquote": {"cite"},
    "q": {"cite"},
}
_CONTENT_DROPPED = frozenset(("script", "style", "title", "head", "template", "noscript"))
_URL_SCHEMES = frozenset(("http", "https", "mailto", "cid"))


def sanitize_html(
    markup: str, *, cid_url: CidUrl | None = None, allow_remote_images: bool = False
) -> str:
    """HTML with scripts, handlers, forms, frames and styles removed.

    `cid:` image sources go through `cid_url` (content-id -> URL, or None to drop them);
    remote images are dropped unless `allow_remote_images`. Links open without a referrer.
    """

    ours: set[str] = set()

    def keep_attribute(tag: str, attribute: str, value: str) -> str | None:
        if tag == "img" and attribute == "src":
            source = _image_source(value, cid_url, allow_remote_images)
            if source is not None and value.strip().lower().startswith("cid:"):
                ours.add(source)
            return source
        if tag == "a" and attribute == "href" and value.strip().lower().startswith("cid:"):
            return None
        return value

    return nh3.clean(
        markup,
        tags=set(_TAGS),
        clean_content_tags=set(_CONTENT_DROPPED),
        attributes={tag: set(names) for tag, names in _ATTRIBUTES.items()},
        attribute_filter=keep_attribute,
        url_schemes=set(_URL_SCHEMES),
        link_rel="noopener noreferrer",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        # Relative URLs in an email point at nothing we serve; the only relative URLs kept are
        # the ones `cid_url` made for inline images.
        url_relative=lambda url: url if url in ours else None,
        strip_comments=True,
    )


def _image_source(value: str, cid_url: CidUrl | None, allow_remote: bool) -> str | None:
    source = value.strip()
    scheme = source.split(":", 1)[0].lower() if ":" in source else ""
    if scheme == "cid":
        content_id = source[4:].strip().strip("<>")
        return cid_url(content_id) if cid_url and content_id else None
    if scheme in ("http", "https") and allow_remote:
        return source
    return None
