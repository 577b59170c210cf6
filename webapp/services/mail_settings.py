"""Installation-wide mail settings that the account services share."""

from __future__ import annotations

from flask import current_app

from webapp.mail.hostpolicy import HostPolicy, parse_policy


def host_policy() -> HostPolicy:
    """The mail host policy (CASEMAIL_MAIL_HOST_POLICY, checked when the app starts)."""
    value = current_app.config["CASEMAIL_MAIL_HOST_POLICY"]
    return value if isinstance(value, HostPolicy) else parse_policy(value)
