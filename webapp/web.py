"""Blueprints, navigation, error pages and what every page needs."""

from __future__ import annotations

from flask import Flask, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from werkzeug.exceptions import HTTPException

from webapp.extensions import csrf, db, login_manager
from webapp.forms.auth import ConfirmForm
from webapp.ids import IdConverter
from webapp.models import Role
from webapp.navigation import add_nav_item, menus, nav_for
from webapp.security import install_security_headers

ALL_ROLES = (Role.ADMIN, Role.DESIGNER, Role.WORKER)


def register_web(app: Flask) -> None:
    from webapp.accounts import bp as accounts_bp
    from webapp.admin import bp as admin_bp
    from webapp.api import bp as api_bp
    from webapp.approvals import bp as approvals_bp
    from webapp.auth import bp as auth_bp
    from webapp.cases import bp as cases_bp
    from webapp.channels import bp as channels_bp
    from webapp.designer import bp as designer_bp
    from webapp.inbox import bp as inbox_bp
    from webapp.listeners import bp as listeners_bp
    from webapp.main import bp as main_bp
    from webapp.outbox import bp as outbox_bp
    from webapp.rules import bp as rules_bp

    # Every `<int:...>` stops at the largest ID the database holds, so that a larger number
    # is a 404 (webapp/ids.py). Set before any blueprint: a rule takes its converters when added.
    app.url_map.converters["int"] = IdConverter
    login_manager.session_protection = "basic"
    login_manager.unauthorized_handler(_unauthorized)

    app.register_blueprint(auth_bp)
    app.register_blueprint(main_bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(approvals_bp)  # no login: the signed link is the credential
    app.register_blueprint(cases_bp)
    app.register_blueprint(designer_bp)
    app.register_blueprint(accounts_bp)
    app.register_blueprint(listeners_bp)
    app.register_blueprint(rules_bp)
    app.register_blueprint(channels_bp)
    app.register_blueprint(inbox_bp)
    app.register_blueprint(outbox_bp)
    csrf.exempt(api_bp)  # bearer tokens only; see security.api_token_required

    add_nav_item(app, "Dashboard", "main.index", ALL_ROLES, 0, "/$")
    add_nav_item(app, "Cases", "cases.queue", (Role.ADMIN, Role.WORKER), 10, "/cases")
    add_nav_item(
        app, "Case types", "designer.index", (Role.ADMIN, Role.DESIGNER), 20, "/case-types"
    )
    add_nav_item(app, "Email accounts", "accounts.accounts", (Role.ADMIN,), 30, "/admin/accounts")
    add_nav_item(app, "Listeners", "listeners.listeners", (Role.ADMIN,), 40, "/admin/listeners")
    add_nav_item(app, "Rules", "rules.rules", (Role.ADMIN,), 50, "/admin/rules")
    add_nav_item(
        app, "Channels", "channels.channels", (Role.ADMIN,), 55, "/admin/channels", "Admin"
    )
    add_nav_item(app, "Incoming mail", "inbox.messages", (Role.ADMIN,), 75, "/admin/inbox", "Admin")
    add_nav_item(
        app, "Outgoing mail", "outbox.messages", (Role.ADMIN,), 77, "/admin/outbox", "Admin"
    )
    add_nav_item(app, "Users", "admin.users", (Role.ADMIN,), 80, "/admin/users", "Admin")
    add_nav_item(app, "Groups", "admin.groups", (Role.ADMIN,), 85, "/admin/groups", "Admin")
    add_nav_item(app, "System", "admin.system", (Role.ADMIN,), 90, "/admin/system", "Admin")
    if app.config["CASEMAIL_DEV_SANDBOX"]:
        from webapp.devtools import bp as devtools_bp

        app.register_blueprint(devtools_bp)
        add_nav_item(app, "Mail sandbox", "devtools.mailbox", (Role.ADMIN,), 100, "/dev/", "Admin")

    install_security_headers(app)
    _install_error_pages(app)

    @app.context_processor
    def _page_context() -> dict[str, object]:
        nav = nav_for(current_app, current_user) if current_user.is_authenticated else []
        return {
            "nav_items": [item for item in nav if not item.menu],
            "nav_menus": menus(nav),
            "logout_form": ConfirmForm(formdata=None),
            "environment": current_app.config["CASEMAIL_ENV"],
        }


def _unauthorized():
    """Send visitors to the sign-in page, and back where they were going afterwards."""
    if request.path.startswith("/api/"):
        return jsonify(error="unauthorized", message="A valid API token is required."), 401
    if request.path != "/":
        flash("Please sign in to see that page.", "info")
    target = request.full_path if request.query_string else request.path
    return redirect(url_for("auth.login", next=target))


_MESSAGES = {
    400: (
        "Bad request",
        "The form or link was not complete. Go back, reload the page and try again.",
    ),
    403: (
        "Not allowed",
        "Your role does not give you access to this page. Ask an admin if you need it.",
    ),
    404: (
        "Not found",
        "There is nothing at this address. It may have been removed, or the link is mistyped.",
    ),
    405: ("Not allowed", "This address does not accept that kind of request."),
    413: ("Too large", "The upload is larger than this server accepts."),
    429: ("Slow down", "Too many requests. Wait a moment and try again."),
    500: (
        "Something went wrong",
        "The error was logged. Try again; if it keeps happening, tell your admin.",
    ),
}


def _install_error_pages(app: Flask) -> None:
    def render_error(code: int):
        title, text = _MESSAGES.get(code, ("Error", "The request could not be completed."))
        limit = app.config.get("MAX_CONTENT_LENGTH")
        # A body sent without a length (chunked) was stopped at the limit.
        if code == 413 and limit and (request.content_length or limit + 1) > limit:
            text = (
                f"The upload is larger than this server accepts: {limit // (1024 * 1024)} MB "
                "(CASEMAIL_MAX_UPLOAD_MB)."
            )
        if request.path.startswith("/api/"):
            return jsonify(error=title.lower().replace(" ", "_"), message=text), code
        return render_template("errors/error.html", code=code, title=title, text=text), code

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if exc.code is None or exc.code < 400:
            return exc
        return render_error(exc.code)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        db.session.rollback()
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return render_error(500)
