"""Who may see what: login loading, role checks, security headers."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, abort, g, jsonify, request
from flask_login import current_user
from sqlalchemy import select

from webapp.extensions import db, login_manager
from webapp.models import Role, User

F = TypeVar("F", bound=Callable[..., Any])


@login_manager.user_loader
def _load_user(session_token: str) -> User | None:
    user = db.session.scalar(select(User).where(User.session_token == session_token))
    return user if user is not None and user.active else None


def roles_required(*roles: Role) -> Callable[[F], F]:
    """Let in logged-in users with one of `roles` (admins always); others get 401/403."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if not current_user.has_role(*roles):
                abort(403)
            return view(*args, **kwargs)

        wrapper.required_roles = roles  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


any_role = roles_required(Role.ADMIN, Role.DESIGNER, Role.WORKER)
admin_required = roles_required(Role.ADMIN)


def api_token_required(view: F) -> F:
    """Authenticate an API call by its bearer token only (never by the session cookie, so
    that the API needs no CSRF token and a browser session cannot be ridden)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from webapp.services.users import user_for_api_token

        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        user = None
        if scheme.lower() == "bearer" and token.strip():
            user = user_for_api_token(token.strip())
        if user is None:
            response = jsonify(error="unauthorized", message="A valid API token is required.")
            response.status_code = 401
            response.headers["WWW-Authenticate"] = 'Bearer realm="casemail"'
            return response
        g.api_user = user
        result = view(*args, **kwargs)
        db.session.commit()  # records last_used_at
        return result

    return wrapper  # type: ignore[return-value]


CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' data:",
        "style-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'self'",
        "form-action 'self'",
    ]
)


def install_security_headers(app: Flask) -> None:
    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if app.config["SESSION_COOKIE_SECURE"]:
            response.headers.setdefault(
                "Strict-Transport-Security", "max-age=31536000; includeSubDomains"
            )
        return response
