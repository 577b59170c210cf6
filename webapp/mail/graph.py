"""Microsoft Graph mail: list a mailbox's folders and send a message (v1.0 REST API)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

from webapp.mail.connect import DASH
from webapp.mail.oauth import OAuthSettings, http_session

DEFAULT_GRAPH_URL = "https://graph.microsoft.com"


class GraphError(Exception):
    """Graph refused a request; the message is one sentence for the user."""


def _raise_for(response: requests.Response, upn: str) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json().get("error", {})
        code, message = error.get("code", ""), error.get("message", "")
    except (ValueError, AttributeError):
        code, message = "", ""
    message = message.rstrip(".")
    if response.status_code in (401, 403):
        raise GraphError(
            f"Microsoft Graph refused access to {upn} ({code or response.status_code}): "
            f"{message or 'check the application permissions Mail.Read / Mail.Send'}."
        )
    raise GraphError(
        f"Microsoft Graph answered {response.status_code} {code}: {message or 'no detail'}."
    )


def _url(graph_url: str, upn: str, tail: str) -> str:
    return f"{graph_url.rstrip('/')}/v1.0/users/{quote(upn, safe='@')}/{tail}"


def check_mailbox(
    graph_url: str, upn: str, token: str, settings: OAuthSettings, timeout: float = 30
) -> str:
    """List the mailbox's top-level folders; returns what was used. Raises GraphError."""
    with http_session(settings) as session:
        try:
            response = session.get(
                _url(graph_url, upn, "mailFolders"),
                headers={"Authorization": f"Bearer {token}"},
                params={"$top": "100"},
                timeout=timeout,
            )
        except requests.RequestException as exc:
            raise GraphError(
                f"Microsoft Graph could not be reached: {type(exc).__name__}."
            ) from None
    _raise_for(response, upn)
    count = len(response.json().get("value", []))
    noun = "folder" if count == 1 else "folders"
    return f"Microsoft Graph as {upn} {DASH} {count} {noun}"


def send_mail(
    graph_url: str,
    upn: str,
    token: str,
    settings: OAuthSettings,
    message: dict[str, Any],
    timeout: float = 30,
) -> None:
    """POST /users/{upn}/sendMail with a Graph message resource. Raises GraphError."""
    with http_session(settings) as session:
        try:
            response = session.post(
                _url(graph_url, upn, "sendMail"),
                headers={"Authorization": f"Bearer {token}"},
                json={"message": message, "saveToSentItems": True},
                timeout=timeout,
            )
        except requests.RequestException as exc:
            raise GraphError(
                f"Microsoft Graph could not be reached: {type(exc).__name__}."
            ) from None
    _raise_for(response, upn)
