from __future__ import annotations

import time

from flask import abort, flash, redirect, render_template, request, url_for
from redis.exceptions import RedisError
from sqlalchemy import select

from webapp.extensions import db
from webapp.forms.auth import ConfirmForm
from webapp.ids import as_id
from webapp.listeners import bp
from webapp.listeners.forms import ListenerFolderForm, ListenerForm
from webapp.mail.connect import ConnectivityError
from webapp.models import EmailAccount, EmailChannel, EmailListener, ServiceEmailRule
from webapp.models.types import utcnow
from webapp.security import admin_required
from webapp.services import listeners as service
from webapp.services.receiving import ReceivingError, server_folders
from webapp.views import delete_and_redirect

# "Poll now" starts no batch after this many seconds (a request must not outlast the web
# server's timeout); a worker's poll fetches what is left.
POLL_NOW_SECONDS = 10.0


def _listener_or_404(listener_pk: int) -> EmailListener:
    listener = db.session.get(EmailListener, listener_pk)
    if listener is None:
        abort(404)
    return listener


@bp.route("/admin/listeners")
@admin_required
def listeners():
    now = utcnow()
    rows = [
        (listener, service.listener_health(listener, now)) for listener in service.list_listeners()
    ]
    return render_template("listeners/list.html", rows=rows, action_form=ConfirmForm(formdata=None))


def _account_for_form(
    listener: EmailListener | None, accounts: list[EmailAccount]
) -> EmailAccount | None:
    """The account whose folders the form offers: the one submitted, asked for, or saved."""
    wanted = request.form.get("account_id") or request.args.get("account")
    if wanted is None and listener is not None:
        return listener.account
    if wanted is None:
        return accounts[0] if accounts else None
    try:
        return db.session.get(EmailAccount, as_id(wanted))
    except ValueError:
        return None


def _editor(listener: EmailListener | None):
    accounts = list(db.session.scalars(select(EmailAccount).order_by(EmailAccount.account_id)))
    if not accounts:
        flash("Create an email account first: a listener watches one of its folders.", "info")
        return redirect(url_for("accounts.accounts"))
    rules = list(db.session.scalars(select(ServiceEmailRule).order_by(ServiceEmailRule.name)))
    account = _account_for_form(listener, accounts)
    folders: list[str] = []
    folder_note = ""
    if account is not None:
        try:
            folders = server_folders(account)
        except ConnectivityError as exc:
            folder_note = f"The server of {account.account_id} did not list its folders: {exc}"
    source = listener or service.new_listener()
    form: ListenerForm
    if folders:
        form = ListenerFolderForm(obj=source)
        for current in (source.folder, source.move_to_folder):
            if current and current not in folders:
                folders.append(current)
        form.set_folders(folders)
    else:
        form = ListenerForm(obj=source)
    channels = list(db.session.scalars(select(EmailChannel).order_by(EmailChannel.name)))
    form.set_choices(accounts, rules, channels)
    if not form.is_submitted() and account is not None:
        form.account_id.data = account.id
    # "Show its folders": the same form again, with the chosen account's folders; what was
    # typed is kept, nothing is saved or refused.
    showing_folders = form.is_submitted() and "show_folders" in request.form
    if not showing_folders and form.validate_on_submit():
        try:
            saved = service.save_listener(listener, form.values())
        except service.ListenerError as exc:
            db.session.rollback()
            _put_errors(form, exc.errors)
        else:
            db.session.commit()
            flash(f"Listener {saved.name} saved.", "success")
            return redirect(url_for("listeners.listeners"))
    elif form.is_submitted() and not showing_folders:
        # Every refused field in one round, not the form's first and the service's next time.
        _put_errors(form, service.listener_errors(listener, form.values()))
    status = 400 if form.is_submitted() and not showing_folders else 200
    return (
        render_template(
            "listeners/form.html",
            form=form,
            listener=listener,
            account=account,
            folder_note=folder_note,
            delete_form=ConfirmForm(formdata=None),
        ),
        status,
    )


def _put_errors(form: ListenerForm, errors: dict[str, str]) -> None:
    for name, message in errors.items():
        field = getattr(form, name, None)
        if field is None:
            flash(message, "danger")
        elif not field.errors:
            field.errors = [*field.errors, message]


@bp.route("/admin/listeners/new", methods=["GET", "POST"])
@admin_required
def new():
    return _editor(None)


@bp.route("/admin/listeners/<int:listener_pk>", methods=["GET", "POST"])
@admin_required
def edit(listener_pk: int):
    return _editor(_listener_or_404(listener_pk))


@bp.route("/admin/listeners/<int:listener_pk>/poll", methods=["POST"])
@admin_required
def poll_now(listener_pk: int):
    from workers.listeners import PollBusy, run_poll

    listener = _listener_or_404(listener_pk)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    name, enabled = listener.name, listener.enabled
    try:
        result = run_poll(listener_pk, until=time.monotonic() + POLL_NOW_SECONDS)
    except PollBusy:
        flash(f"{name} is being polled by a worker right now; look again in a moment.", "info")
    except ReceivingError as exc:
        db.session.rollback()
        flash(str(exc), "danger")
    except RedisError:
        # A poll runs only under its listener's lock, which lives in Redis.
        db.session.rollback()
        flash(f"The job queue (Redis) is unavailable, so {name} cannot be polled now.", "danger")
    else:
        said = f"Polled {name}: {result.summary()}."
        if result.more:
            said += " " + _rest_of_the_mail(listener_pk, enabled)
        if result.ok:
            flash(said, "success")
        else:
            flash(f"{said} {' '.join(result.errors)}", "danger")
    return redirect(url_for("listeners.listeners"))


def _rest_of_the_mail(listener_id: int, enabled: bool) -> str:
    """Hand the mail a poll left on the server (it ran out of its time) to a worker's poll;
    a disabled listener is polled only when asked, so it waits for the next "Poll now"."""
    from workers.listeners import enqueue_poll, rest_job_id

    if not enabled:
        return "More mail waits on the server; the listener is disabled: Poll now fetches more."
    try:
        enqueue_poll(listener_id, rest_job_id(listener_id))
    except RedisError:
        return "More mail waits on the server; the next scheduled poll fetches it."
    return "More mail waits on the server; a worker is fetching the rest."


@bp.route("/admin/listeners/<int:listener_pk>/delete", methods=["POST"])
@admin_required
def delete(listener_pk: int):
    listener = _listener_or_404(listener_pk)
    home = url_for("listeners.listeners")
    return delete_and_redirect(
        lambda: service.delete_listener(listener),
        refused=service.ListenerInUse,
        done=f"Listener {listener.name} deleted. The messages it stored are kept.",
        back=home,
        home=home,
    )
