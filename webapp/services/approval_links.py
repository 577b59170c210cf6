"""Signed Approve / Reject links of approval requests.

A link carries the request's reply token and the decision, signed with the app's secret key
(itsdangerous), so that neither can be altered. Opening it shows a confirmation page: a GET
never decides, because mail scanners open links. The token's expiry and single use are checked
on the `Approval` row when the decision is posted.

The stored body of an approval request holds only the markers below; the sender replaces
them with the links when it sends the message, so the outbox never keeps a usable link.
"""

from __future__ import annotations

from flask import current_app
from itsdangerous import BadSignature, URLSafeSerializer

from webapp.mail.correlate import is_reply_token

APPROVE = "approve"
REJECT = "reject"
DECISIONS = (APPROVE, REJECT)
APPROVE_MARK = "[[approve_link]]"
REJECT_MARK = "[[reject_link]]"
_SALT = "casemail.approval-link"


class LinkError(ValueError):
    """The link was altered, cut short or is not an approval link."""


def _serializer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt=_SALT)


def link_for(token: str, decision: str) -> str:
    """The absolute URL of the confirmation page for `decision` on the request of `token`."""
    if decision not in DECISIONS:
        raise ValueError(f"unknown decision {decision!r}")
    signed = _serializer().dumps({"t": token, "d": decision})
    return f"{current_app.config['CASEMAIL_BASE_URL']}/approvals/{signed}"


def read_link(signed: str) -> tuple[str, str]:
    """(reply token, decision) from the signed part of a link; raises LinkError."""
    try:
        data = _serializer().loads(signed)
    except BadSignature:
        raise LinkError("This approval link is not valid: it may have been cut short.") from None
    if not isinstance(data, dict):
        raise LinkError("This approval link is not valid.")
    token, decision = data.get("t"), data.get("d")
    if not isinstance(token, str) or not is_reply_token(token) or decision not in DECISIONS:
        raise LinkError("This approval link is not valid.")
    return token, decision


def fill_links(body: str, token: str) -> str:
    """`body` with the link markers replaced by the signed links for `token`."""
    return body.replace(APPROVE_MARK, link_for(token, APPROVE)).replace(
        REJECT_MARK, link_for(token, REJECT)
    )
