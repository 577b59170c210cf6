"""Raw MIME pushed over HTTP into a listener: the HTTP twin of `flask mail ingest --listener`."""

from __future__ import annotations

import functools
import logging
from typing import Any

from flask import Response, current_app, g, jsonify, request
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import RequestEntityTooLarge

from webapp.api import bp
from webapp.extensions import db
from webapp.models import EmailListener, Role
from webapp.security import api_token_required
from webapp.services.intake import IntakeError, store_for_listener

log = logging.getLogger(__name__)

MIME_TYPE = "message/rfc822"
RETRY_AFTER_SECONDS = 60


def _error(status: int, error: str, message: str) -> Response:
    response = jsonify(error=error, message=message)
    response.status_code = status
    return response


def _database_unavailable_as_503(view: Any) -> Any:
    # Outside api_token_required: the token lookup is the first thing to hit the database.
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return view(*args, **kwargs)
        except SQLAlchemyError:
            db.session.rollback()
            log.exception("HTTP intake: the database is unavailable")
            response = _error(
                503, "unavailable", "The database is unavailable; send the message again later."
            )
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response

    return wrapper


class _CutShort(Exception):
    """The body ended before the Content-Length it announced (the client went away)."""

    def __init__(self, got: int, announced: int) -> None:
        super().__init__(
            f"The message ended after {got} of the {announced} bytes its Content-Length "
            "announced; nothing was stored. Send it again."
        )


def _read_up_to(stream: Any, size: int) -> bytes:
    """Up to `size` bytes of `stream`, fewer only at its end (a raw stream, such as a dechunked
    body, may answer each read with one chunk)."""
    parts: list[bytes] = []
    left = size
    while left > 0 and (part := stream.read(left)):
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _read_limited(limit: int) -> bytes | None:
    """The request body, or None when it is larger than `limit` bytes.

    Raises _CutShort when it ended before its Content-Length, and RequestEntityTooLarge (413)
    when a body sent without a length (chunked) goes past the server's upload limit.
    """
    if request.content_length is not None and request.content_length > limit:
        return None
    if request.content_length is None and "wsgi.input_terminated" in request.environ:
        # Chunked, ended by the server: read against both limits here. The request's own
        # stream stops at the upload limit without a word, and cannot tell a body of exactly
        # that size from a longer one.
        cap = current_app.config.get("MAX_CONTENT_LENGTH")
        most = limit if cap is None else min(limit, cap)
        raw = _read_up_to(request.input_stream, most + 1)
        if cap is not None and len(raw) > cap:
            raise RequestEntityTooLarge()
        return None if len(raw) > limit else raw
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        return None
    if request.content_length is not None and len(raw) < request.content_length:
        raise _CutShort(len(raw), request.content_length)
    return raw


@bp.route("/listeners/<int:listener_id>/messages", methods=["POST"])
@_database_unavailable_as_503
@api_token_required
def intake_message(listener_id: int) -> Response:
    if not g.api_user.has_role(Role.ADMIN):
        return _error(403, "forbidden", "Only admins send messages to a listener.")
    listener = db.session.get(EmailListener, listener_id)
    if listener is None:
        return _error(404, "not_found", f"There is no listener with the ID {listener_id}.")
    if request.mimetype != MIME_TYPE:
        return _error(415, "unsupported_media_type", f"Send the raw message as {MIME_TYPE}.")
    if (request.content_encoding or "identity").lower() != "identity":
        # Stored as it came, a compressed body would be quarantined as "not an email message".
        return _error(
            415,
            "unsupported_media_type",
            "Send the raw message uncompressed, without a Content-Encoding.",
        )
    try:
        raw = _read_limited(listener.max_message_bytes)
    except _CutShort as exc:
        return _error(400, "incomplete", str(exc))
    if raw is None:
        return _error(
            413,
            "too_large",
            f"The message is larger than the listener's limit of "
            f"{listener.max_message_bytes} bytes.",
        )
    try:
        inbound = store_for_listener(raw, "http", listener)
    except IntakeError as exc:
        db.session.rollback()
        return _error(422, "refused", f"The message was refused: {exc}.")
    db.session.commit()
    try:
        from workers.inbound import enqueue_ingest

        enqueue_ingest([inbound.id])
    except RedisError:
        # Stored and committed is what counts: the reconciler enqueues it later.
        log.warning("HTTP intake: message %s left for the reconciler", inbound.id)
    response = jsonify(id=inbound.id, status=inbound.status)
    response.status_code = 202
    return response
