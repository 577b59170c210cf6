"""Microsoft Graph mail: list a mailbox's folders and send a message (v1.0 REST API)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

from webapp.mail.connect import DASH
from webapp.mail.hostpolicy import HostPolicy, HostRefused
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


def _request(
    method: str,
    url: str,
    token: str,
    settings: OAuthSettings,
    policy: HostPolicy,
    timeout: float,
    **kwargs: Any,
) -> requests.Response:
    with http_session(settings, policy) as session:
        try:
            return session.request(
                method,
                url,
                headers={"Authorization": f"Bearer {token}"},
                timeout=timeout,
                **kwargs,
            )
        except HostRefused as exc:
            raise GraphError(f"Microsoft Graph could not be reached: {exc}") from None
        except requests.RequestException as exc:
            raise GraphError(
                f"Microsoft Graph could not be reached: {type(exc).__name__}."
            ) from None


def check_mailbox(
    graph_url: str,
    upn: str,
    token: str,
    settings: OAuthSettings,
    policy: HostPolicy,
    timeout: float = 30,
) -> str:
    """List the mailbox's top-level folders; returns what was used. Raises GraphError."""
    response = _request(
        "GET",
        _url(graph_url, upn, "mailFolders"),
        token,
        settings,
        policy,
        timeout,
        params={"$top": "100"},
    )
    _raise_for(response, upn)
    try:
        folders = response.json()["value"]
        count = len(folders)
    except (ValueError, KeyError, TypeError):
        raise GraphError(
            f"{graph_url} did not answer like Microsoft Graph (no folder list); check the "
            "Graph endpoint of the OAuth 2.0 profile."
        ) from None
    noun = "folder" if count == 1 else "folders"
    return f"Microsoft Graph as {upn} {DASH} {count} {noun}"


def send_mail(
    graph_url: str,
    upn: str,
    token: str,
    settings: OAuthSettings,
    policy: HostPolicy,
    message: dict[str, Any],
    timeout: float = 30,
) -> None:
    """POST /users/{upn}/sendMail with a Graph message resource. Raises GraphError."""
    response = _request(
        "POST",
        _url(graph_url, upn, "sendMail"),
        token,
        settings,
        policy,
        timeout,
        json={"message": message, "saveToSentItems": True},
    )
    _raise_for(response, upn)
