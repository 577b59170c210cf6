"""Pieces that several blueprints' views share."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

from flask import abort, flash, redirect, request
from werkzeug.wrappers import Response

from webapp.extensions import db
from webapp.forms.auth import ConfirmForm

# A page number past this shows an empty page; a larger one would overflow the query's OFFSET.
MAX_PAGE_NUMBER = 1_000_000


def file_download(data: bytes, filename: str) -> Response:
    """`data` as a file to save under `filename` (an ASCII form for old clients, the exact
    name in UTF-8 for the others), never shown inline nor sniffed as something else."""
    response = Response(data, mimetype="application/octet-stream")
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_")
    response.headers["Content-Disposition"] = (
        f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def page_number() -> int:
    """The list page asked for by `?page=`: 1 when missing or not a number, at most
    MAX_PAGE_NUMBER."""
    number = request.args.get("page", 1, type=int) or 1
    return min(max(number, 1), MAX_PAGE_NUMBER)


def delete_and_redirect(
    delete: Callable[[], object],
    *,
    refused: type[Exception] | tuple[type[Exception], ...] = (),
    done: str,
    back: str,
    home: str,
) -> Response:
    """The POST of a Delete button: check its CSRF token, call `delete` (a service that
    flushes), commit and flash `done`, then go to `home`; a `refused` error is flashed as it
    says and leads to `back` with nothing changed."""
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        delete()
    except refused as exc:
        db.session.rollback()
        flash(str(exc), "danger")
        return redirect(back)
    db.session.commit()
    flash(done, "success")
    return redirect(home)
