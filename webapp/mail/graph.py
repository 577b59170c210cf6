"""Microsoft Graph mail: folders, message deltas, raw MIME, and sending (v1.0 REST API)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from webapp.mail.connect import DASH
from webapp.mail.hostpolicy import HostPolicy, HostRefused
from webapp.mail.oauth import OAuthSettings, http_session

DEFAULT_GRAPH_URL = "https://graph.microsoft.com"


class GraphError(Exception):
    """Graph refused a request; the message is one sentence for the user."""


class DeltaExpired(GraphError):
    """Graph no longer knows a delta link (410 Gone): the folder must be listed from the start."""


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
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> requests.Response:
    with http_session(settings, policy) as session:
        try:
            return session.request(
                method,
                url,
                headers={**(headers or {}), "Authorization": f"Bearer {token}"},
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


class GraphSendError(GraphError):
    """sendMail did not take a message; `status` is Graph's HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def send_mime(
    session: requests.Session,
    graph_url: str,
    upn: str,
    token: str,
    mime: bytes,
    timeout: float = 30,
) -> None:
    """POST /users/{upn}/sendMail with the whole message as base64 MIME, which Graph sends as
    it is (headers, signature and all). `session` comes from `oauth.http_session`, so that one
    connection carries a batch. Raises GraphSendError."""
    try:
        response = session.post(
            _url(graph_url, upn, "sendMail"),
            data=base64.b64encode(mime),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
            timeout=timeout,
        )
    except HostRefused as exc:
        raise GraphSendError(f"Microsoft Graph could not be reached: {exc}") from None
    except requests.RequestException as exc:
        raise GraphSendError(
            f"Microsoft Graph could not be reached: {type(exc).__name__}."
        ) from None
    try:
        _raise_for(response, upn)
    except GraphError as exc:
        raise GraphSendError(str(exc), response.status_code) from None


# -- receiving ----------------------------------------------------------------------------------

# Ids that stay the same when a message is moved: the only ones fit to remember it by.
_IMMUTABLE = 'IdType="ImmutableId"'


@dataclass(frozen=True)
class DeltaPage:
    """One page of a folder's delta: messages added or changed, and where to go on from here.

    Exactly one of `next_link` (more pages now) and `delta_link` (the next poll) is set.
    """

    messages: list[dict[str, Any]]
    next_link: str | None
    delta_link: str | None


# Folders deeper than this are not listed: a mailbox nesting further is more likely a loop in
# what the server answers than folders someone watches.
MAX_FOLDER_DEPTH = 10


def _folder_page(
    graph_url: str,
    upn: str,
    url: str,
    token: str,
    settings: OAuthSettings,
    policy: HostPolicy,
    timeout: float,
) -> tuple[list[tuple[str, str, int]], str | None]:
    """One page of a folder list: (id, display name, child folder count), and the next link."""
    response = _request("GET", url, token, settings, policy, timeout)
    _raise_for(response, upn)
    try:
        body = response.json()
        rows = [
            (str(f["id"]), str(f["displayName"]), int(f.get("childFolderCount") or 0))
            for f in body["value"]
        ]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise GraphError(f"{graph_url} did not answer with a folder list.") from None
    return rows, body.get("@odata.nextLink")


def folder_key(path: str) -> str:
    """A folder path as compared: names without surrounding spaces, joined by "/", and
    without regard to letter case (`inbox / approvals` is `Inbox/Approvals`)."""
    return "/".join(part.strip() for part in path.strip().strip("/").split("/")).casefold()


def list_folders(
    graph_url: str,
    upn: str,
    token: str,
    settings: OAuthSettings,
    policy: HostPolicy,
    timeout: float = 30,
    toward: Sequence[str] | None = None,
) -> list[tuple[str, str]]:
    """The mailbox's folders, nested ones included, as (id, path) where the path joins display
    names with "/" (`Inbox/Approvals`); each parent comes before its children.

    With `toward`, only the folders on the way to those paths are opened (one request per
    level rather than one per folder that has children). Raises GraphError."""
    folders: list[tuple[str, str]] = []
    seen: set[str] = set()
    # The folders whose children are needed to reach `toward`, as folder_key gives them.
    ancestors: set[str] | None = None
    if toward is not None:
        ancestors = {
            "/".join(parts[:end])
            for parts in (folder_key(path).split("/") for path in toward)
            for end in range(1, len(parts))
        }

    def walk(url: str | None, parent: str, depth: int) -> None:
        while url:
            rows, url = _folder_page(graph_url, upn, url, token, settings, policy, timeout)
            for folder_id, name, children in rows:
                if folder_id in seen:
                    continue
                seen.add(folder_id)
                path = f"{parent}/{name}" if parent else name
                folders.append((folder_id, path))
                wanted = ancestors is None or folder_key(path) in ancestors
                if children and wanted and depth < MAX_FOLDER_DEPTH:
                    tail = f"mailFolders/{quote(folder_id, safe='')}/childFolders?$top=100"
                    walk(_url(graph_url, upn, tail), path, depth + 1)

    walk(_url(graph_url, upn, "mailFolders?$top=100"), "", 1)
    return folders


def delta_page(
    graph_url: str,
    upn: str,
    token: str,
    settings: OAuthSettings,
    policy: HostPolicy,
    folder_id: str,
    link: str | None,
    page_size: int,
    timeout: float = 30,
) -> DeltaPage:
    """GET a page of `folder_id`'s message delta, from `link` (a next or delta link) or from
    the start; messages carry immutable ids. Raises DeltaExpired (a GraphError) when Graph no
    longer knows `link`, GraphError otherwise."""
    url = link or _url(
        graph_url, upn, f"mailFolders/{quote(folder_id, safe='')}/messages/delta?$select=id,isRead"
    )
    headers = {"Prefer": f"{_IMMUTABLE}, odata.maxpagesize={page_size}"}
    response = _request("GET", url, token, settings, policy, timeout, headers=headers)
    if response.status_code == 410 and link:
        raise DeltaExpired("Microsoft Graph no longer knows the delta link.")
    _raise_for(response, upn)
    try:
        body = response.json()
        messages = [m for m in body["value"] if isinstance(m, dict) and "id" in m]
    except (ValueError, KeyError, TypeError):
        raise GraphError(f"{graph_url} did not answer with a message delta.") from None
    next_link, delta_link = body.get("@odata.nextLink"), body.get("@odata.deltaLink")
    if bool(next_link) == bool(delta_link):
        raise GraphError(f"{graph_url} answered a message delta without a next or delta link.")
    return DeltaPage(messages, next_link, delta_link)


def message_mime(
    graph_url: str,
    upn: str,
    token: str,
    settings: OAuthSettings,
    policy: HostPolicy,
    message_id: str,
    timeout: float = 30,
) -> bytes:
    """GET a message's raw MIME ($value). Raises GraphError."""
    url = _url(graph_url, upn, f"messages/{quote(message_id, safe='')}/$value")
    response = _request(
        "GET", url, token, settings, policy, timeout, headers={"Prefer": _IMMUTABLE}
    )
    _raise_for(response, upn)
    return response.content


def after_processing(
    graph_url: str,
    upn: str,
    token: str,
    settings: OAuthSettings,
    policy: HostPolicy,
    message_id: str,
    action: str,
    destination_id: str = "",
    timeout: float = 30,
) -> None:
    """Mark a message read ("mark_read"), delete it ("delete") or move it ("move") to the
    folder `destination_id`. A message gone already counts as done. Raises GraphError."""
    url = _url(graph_url, upn, f"messages/{quote(message_id, safe='')}")
    headers = {"Prefer": _IMMUTABLE}
    if action == "mark_read":
        response = _request(
            "PATCH", url, token, settings, policy, timeout, headers=headers, json={"isRead": True}
        )
    elif action == "delete":
        response = _request("DELETE", url, token, settings, policy, timeout, headers=headers)
    else:
        response = _request(
            "POST",
            f"{url}/move",
            token,
            settings,
            policy,
            timeout,
            headers=headers,
            json={"destinationId": destination_id},
        )
    if response.status_code != 404:
        _raise_for(response, upn)
