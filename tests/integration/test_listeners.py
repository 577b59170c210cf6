"""Admins set up listeners, see their health, poll them now; workers poll one at a time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from rq import Queue
from sqlalchemy import func, select

from tests.fixtures.app import AuthActions, both_databases, csrf_token
from tests.fixtures.listeners import make_raw
from tests.support.ports import free_port
from tests.support.race import while_another_writes
from webapp import create_app
from webapp.extensions import db, get_redis
from webapp.models import EmailListener, InboundMessage
from webapp.models.types import utcnow
from workers.listeners import (
    listener_lock,
    poll_job_id,
    poll_listener,
    rest_job_id,
    schedule_polls,
)
from workers.queues import INBOUND
from workers.worker import run_worker

NEW = "/admin/listeners/new"


def _fields(account_pk: int, **overrides) -> dict[str, str]:
    data = {
        "name": "Support inbox",
        "account_id": str(account_pk),
        "folder": "INBOX",
        "message_format": "both",
        "rule_id": "None",
        "poll_interval_seconds": "60",
        "max_batch": "100",
        "after_processing": "mark_read",
        "move_to_folder": "",
        "max_message_bytes": "1048576",
        "use_idle": "y",
        "enabled": "y",
    }
    data.update(overrides)
    return data


def _post(client, path: str, data: dict[str, str]):
    return client.post(path, data={**data, "csrf_token": csrf_token(client, path)})


def test_showing_another_accounts_folders_keeps_what_was_typed_and_saves_nothing(
    app, client, login_as, dovecot, mailbox_user, mailbox_account, make_account
):
    dovecot.create_folder(mailbox_user.login, "Orders")
    other = make_account(account_id="other", receiver_host="mail.example.invalid")
    account = mailbox_account()
    login_as("admin")
    typed = _fields(other, name="My new listener", poll_interval_seconds="300")
    response = _post(client, NEW, {**typed, "account_id": str(account), "show_folders": "1"})
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert '<option value="Orders">Orders</option>' in page  # the chosen account's folders
    assert 'value="My new listener"' in page and 'value="300"' in page
    assert "is-invalid" not in page  # nothing refused
    assert _count(app) == 0


def _count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count(EmailListener.id)))


@both_databases
def test_admin_creates_a_listener_picking_the_folder_from_the_server(
    app, client, login_as, dovecot, mailbox_user, mailbox_account
):
    dovecot.create_folder(mailbox_user.login, "Orders")
    account = mailbox_account()
    login_as("admin")

    page = client.get(f"{NEW}?account={account}").get_data(as_text=True)
    assert '<select class="form-select" id="folder" name="folder"' in page
    assert '<option value="Orders">Orders</option>' in page

    response = _post(client, NEW, _fields(account, folder="Orders"))
    assert response.status_code == 302
    listing = client.get("/admin/listeners").get_data(as_text=True)
    assert "Support inbox" in listing
    assert "Orders" in listing
    assert "Not polled yet" in listing
    with app.app_context():
        listener = db.session.scalar(select(EmailListener))
        assert (listener.folder, listener.max_message_bytes) == ("Orders", 1048576)
        assert listener.use_idle is True and listener.send_error_email is False


def test_a_server_that_does_not_answer_gives_a_text_field_with_a_note(
    app, client, login_as, make_account
):
    account = make_account(receiver_host="mail.example.invalid")
    login_as("admin")
    page = client.get(NEW).get_data(as_text=True)
    assert "did not list its folders" in page
    assert 'id="folder" maxlength="255" name="folder" required type="text"' in page
    assert _post(client, NEW, _fields(account, folder="Support")).status_code == 302
    assert _count(app) == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"poll_interval_seconds": "2"}, "Number must be between 10 and 86400."),
        ({"after_processing": "move"}, "Enter the folder to move processed messages to."),
        (
            {"after_processing": "move", "move_to_folder": "INBOX"},
            "Choose another folder than the one watched.",
        ),
        (
            {"after_processing": "move", "move_to_folder": "inbox"},
            "Choose another folder than the one watched.",
        ),
        ({"folder": "Orders\r\nA1 LOGOUT"}, "A folder name has no line breaks or other control"),
        ({"folder": "Orders\u2028Done"}, "A folder name has no line breaks or other control"),
        (
            {"after_processing": "move", "move_to_folder": "Done\x1b"},
            "A folder name has no line breaks or other control",
        ),
        ({"name": ""}, "This field is required."),
        ({"max_batch": "  "}, "Enter the batch size."),
    ],
)
def test_refused_values_are_explained_beside_the_field(
    app, client, login_as, make_account, overrides, message
):
    account = make_account(receiver_host="mail.example.invalid")
    login_as("admin")
    response = _post(client, NEW, _fields(account, **overrides))
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert message in html
    assert html.count('class="invalid-feedback') == 1
    assert _count(app) == 0


@pytest.mark.parametrize("typed", ["abc", "1.5", "1e3"])
def test_a_number_that_is_not_a_whole_number_gets_one_message(
    app, client, login_as, make_account, typed
):
    account = make_account(receiver_host="mail.example.invalid")
    login_as("admin")
    response = _post(client, NEW, _fields(account, max_batch=typed))
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert html.count("Enter a whole number.") == 1
    assert "Number must be between" not in html
    assert _count(app) == 0


def test_pop3_cannot_move_or_watch_another_folder(app, client, login_as, make_account):
    account = make_account(
        receiver_protocol="pop3", receiver_host="mail.example.invalid", receiver_security="none"
    )
    login_as("admin")
    response = _post(
        client,
        NEW,
        _fields(account, folder="Archive", after_processing="move", move_to_folder="Done"),
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "POP3 has no folders to move to" in page
    assert "A POP3 account has only one folder: INBOX." in page
    assert _count(app) == 0


def test_names_are_unique(app, client, login_as, make_account, make_listener):
    account = make_account(receiver_host="mail.example.invalid")
    make_listener(account, name="Support inbox")
    login_as("admin")
    response = _post(client, NEW, _fields(account))
    assert response.status_code == 400
    assert "A listener named Support inbox already exists." in response.get_data(as_text=True)


def test_poll_now_stores_the_mail_and_says_what_it_did(
    app, client, login_as, dovecot, mailbox_user, mailbox_account, make_listener, redis_client
):
    for n in range(2):
        dovecot.deliver(mailbox_user.login, make_raw(f"Order {n}"))
    listener_id = make_listener(mailbox_account(), name="Orders")
    login_as("admin")
    page = _poll_now(client, listener_id)
    assert "Polled Orders: fetched 2, stored 2, duplicates 0." in page
    assert "Healthy" in page
    assert "2 waiting, oldest" in page


@pytest.fixture
def backlog(dovecot, mailbox_user, mailbox_account, make_listener, login_as, monkeypatch):
    """backlog(count, **fields): `count` messages in the mailbox, the listener Orders on it
    (batches of 2), "Poll now" with its time limit passed as soon as it starts, an admin
    signed in; returns the listener's id."""
    from webapp.listeners import views

    def make(count: int, **fields) -> int:
        for n in range(count):
            dovecot.deliver(mailbox_user.login, make_raw(f"Order {n}"))
        listener_id = make_listener(mailbox_account(), name="Orders", max_batch=2, **fields)
        monkeypatch.setattr(views, "POLL_NOW_SECONDS", 0.0)
        login_as("admin")
        return listener_id

    return make


def test_poll_now_stops_at_its_time_limit_and_a_worker_fetches_the_rest(
    app, client, backlog, dovecot, mailbox_user, redis_client
):
    listener_id = backlog(5)
    # No second batch is started: the first one ends past the limit.
    page = _poll_now(client, listener_id)
    assert (
        "Polled Orders: fetched 2, stored 2, duplicates 0. More mail waits on the server; "
        "a worker is fetching the rest."
    ) in page
    first = _subjects(app)  # mail delivered within a second has no order on the server
    assert len(first) == 2 and set(first) < {f"Order {n}" for n in range(5)}
    # The stored batch's ingest job, then the poll of the rest.
    assert Queue(INBOUND, connection=redis_client).job_ids[1:] == [rest_job_id(listener_id)]

    # The worker's poll fetches the other three, each once.
    assert run_worker(app, [INBOUND], burst=True) is True
    assert sorted(_subjects(app)) == [f"Order {n}" for n in range(5)]

    # A poll whose mail all fits in its first batch leaves nothing: nothing more to say or queue.
    dovecot.deliver(mailbox_user.login, make_raw("Order 5"))
    page = _poll_now(client, listener_id)
    assert "Polled Orders: fetched 1, stored 1, duplicates 0." in page
    assert "More mail" not in page
    assert rest_job_id(listener_id) not in Queue(INBOUND, connection=redis_client).job_ids


def test_poll_now_leaves_the_rest_of_a_disabled_listener_to_the_next_poll_now(
    client, backlog, redis_client
):
    listener_id = backlog(3, enabled=False)
    assert (
        "Polled Orders: fetched 2, stored 2, duplicates 0. More mail waits on the server; the "
        "listener is disabled: Poll now fetches more."
    ) in _poll_now(client, listener_id)
    assert rest_job_id(listener_id) not in Queue(INBOUND, connection=redis_client).job_ids
    assert "fetched 1, stored 1" in _poll_now(client, listener_id)


def test_poll_now_says_when_the_rest_waits_for_the_scheduled_poll(client, backlog, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    from workers import listeners

    def queue_gone(listener_id: int, job_id: str | None = None) -> None:
        raise RedisConnectionError("the job queue went away after the poll")

    listener_id = backlog(3)
    monkeypatch.setattr(listeners, "enqueue_poll", queue_gone)
    assert (
        "Polled Orders: fetched 2, stored 2, duplicates 0. More mail waits on the server; "
        "the next scheduled poll fetches it."
    ) in _poll_now(client, listener_id)


def _poll_now(client, listener_id: int) -> str:
    """Press "Poll now" on the listeners page; the page it leads back to."""
    response = client.post(
        f"/admin/listeners/{listener_id}/poll",
        data={"csrf_token": csrf_token(client, "/admin/listeners")},
        follow_redirects=True,
    )
    return response.get_data(as_text=True)


def _subjects(app) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(select(InboundMessage.subject)))


def test_a_failing_poll_shows_its_error(
    app, client, login_as, dovecot, mailbox_user, make_account, make_listener
):
    account = make_account(
        receiver_port=dovecot.imap_port, receiver_user_id=mailbox_user.login, receiver_password="no"
    )
    listener_id = make_listener(account, name="Broken")
    login_as("admin")
    page = _poll_now(client, listener_id)
    assert "Polled Broken: fetched 0, stored 0, duplicates 0. Authentication failed" in page
    assert "Last poll failed" in page


def test_a_listener_not_polled_for_three_intervals_is_unhealthy(
    app, client, login_as, make_account, make_listener
):
    listener_id = make_listener(make_account(receiver_host="mail.example.invalid"))
    with app.app_context():
        listener = db.session.get(EmailListener, listener_id)
        listener.last_poll_at = utcnow() - timedelta(seconds=3 * 60 + 5)
        listener.last_poll_ok = True
        db.session.commit()
    login_as("admin")
    assert "Unhealthy" in client.get("/admin/listeners").get_data(as_text=True)


def test_editing_keeps_the_listener_and_delete_keeps_its_messages(
    app, client, login_as, dovecot, mailbox_user, mailbox_account, make_listener
):
    dovecot.deliver(mailbox_user.login, make_raw("Order 1"))
    listener_id = make_listener(mailbox_account(), name="Orders")
    runner = app.test_cli_runner()
    runner.invoke(args=["listeners", "run", str(listener_id), "--once"])
    login_as("admin")
    path = f"/admin/listeners/{listener_id}"
    with app.app_context():
        account = db.session.get(EmailListener, listener_id).account_id
    assert _post(client, path, _fields(account, name="Orders desk")).status_code == 302
    assert "Orders desk" in client.get("/admin/listeners").get_data(as_text=True)
    # Its message still waits to be ingested: the listener stays until it has been.
    response = client.post(
        f"{path}/delete", data={"csrf_token": csrf_token(client, path)}, follow_redirects=True
    )
    assert (
        "1 message this listener stored is still waiting to be ingested. Disable the listener, "
        "and delete it once the workers have ingested them."
    ) in response.get_data(as_text=True)
    assert _count(app) == 1
    assert run_worker(app, [INBOUND], burst=True) is True
    client.post(f"{path}/delete", data={"csrf_token": csrf_token(client, path)})
    assert _count(app) == 0
    with app.app_context():
        assert db.session.scalar(select(func.count(InboundMessage.id))) == 1


@both_databases
def test_a_message_stored_while_its_listener_is_deleted_keeps_the_listener(
    app, make_account, make_listener
):
    """A poll or an intake stores a message while an admin deletes the listener: the delete
    waits for it and then refuses, instead of leaving the message with no listener."""
    from webapp.services.intake import store_for_listener
    from webapp.services.listeners import ListenerInUse, delete_listener

    listener_id = make_listener(make_account(receiver_host="mail.example.invalid"))

    def intake() -> None:
        listener = db.session.get(EmailListener, listener_id)
        store_for_listener(make_raw("Order 7"), "mta", listener)

    def delete() -> None:
        delete_listener(db.session.get(EmailListener, listener_id))

    assert while_another_writes(app, intake, delete, ListenerInUse) == (
        "1 message this listener stored is still waiting to be ingested. Disable the listener, "
        "and delete it once the workers have ingested them."
    )
    with app.app_context():
        assert _count(app) == 1
        assert db.session.scalar(select(InboundMessage.listener_id)) == listener_id


def test_cli_runs_one_poll_and_lists_listeners(
    app, runner, dovecot, mailbox_user, mailbox_account, make_listener, redis_client
):
    for n in range(3):
        dovecot.deliver(mailbox_user.login, make_raw(f"Order {n}"))
    listener_id = make_listener(mailbox_account(), name="Orders")

    result = runner.invoke(args=["listeners", "run", str(listener_id), "--once"])
    assert result.exit_code == 0, result.output
    assert result.output == "fetched 3, stored 3, duplicates 0\n"
    again = runner.invoke(args=["listeners", "run", str(listener_id), "--once"])
    assert again.output == "fetched 0, stored 0, duplicates 0\n"

    listing = runner.invoke(args=["listeners", "list"])
    assert f"{listener_id}\tOrders\t" in listing.output
    assert "\tok\t" in listing.output
    assert "processed 0" in listing.output  # stored and queued; ingest has not run yet

    missing = runner.invoke(args=["listeners", "run", "999", "--once"])
    assert missing.exit_code == 1
    assert "There is no listener with the ID 999." in missing.output


def test_cli_fails_with_the_reason_when_the_poll_fails(
    app, runner, dovecot, mailbox_user, make_account, make_listener
):
    account = make_account(
        receiver_port=dovecot.imap_port, receiver_user_id=mailbox_user.login, receiver_password="no"
    )
    result = runner.invoke(args=["listeners", "run", str(make_listener(account)), "--once"])
    assert result.exit_code == 1
    assert "fetched 0, stored 0, duplicates 0" in result.output
    assert "Authentication failed" in result.output


def test_a_poll_waits_its_turn_while_another_holds_the_lock(
    app, dovecot, mailbox_user, mailbox_account, make_listener
):
    dovecot.deliver(mailbox_user.login, make_raw("Order 1"))
    listener_id = make_listener(mailbox_account())
    with app.app_context():
        with listener_lock(listener_id):
            assert poll_listener(listener_id) == "skipped: a poll of this listener is running"
            assert db.session.scalar(select(func.count(InboundMessage.id))) == 0
        assert poll_listener(listener_id) == "fetched 1, stored 1, duplicates 0"


def test_scheduler_enqueues_each_due_listener_once_and_a_worker_polls_it(
    app, dovecot, mailbox_user, mailbox_account, make_listener, make_account, redis_client
):
    dovecot.deliver(mailbox_user.login, make_raw("Order 1"))
    due = make_listener(mailbox_account())
    disabled = make_listener(make_account(receiver_host="mail.example.invalid"), enabled=False)
    with app.app_context():
        assert schedule_polls() == 1
        # Still waiting in the queue: a second look enqueues nothing more.
        assert schedule_polls() == 0
        queue = Queue(INBOUND, connection=get_redis())
        assert queue.job_ids == [poll_job_id(due)]
    run_worker(app, [INBOUND], burst=True)
    with app.app_context():
        listener = db.session.get(EmailListener, due)
        assert listener.last_poll_ok is True
        # The poll queued the message for ingest, which the same burst worker ran: it has no
        # rule, so it is counted once, as quarantined.
        assert (listener.processed_count, listener.quarantined_count) == (0, 1)
        assert db.session.get(EmailListener, disabled).last_poll_at is None
        # Polled just now: not due again before its interval.
        assert schedule_polls() == 0


def test_idle_news_enqueues_one_poll_however_often_it_comes(
    app, make_account, make_listener, redis_client
):
    from workers.listeners import enqueue_poll

    listener_id = make_listener(make_account(receiver_host="mail.example.invalid"))
    with app.app_context():
        enqueue_poll(listener_id)
        enqueue_poll(listener_id)
    assert Queue(INBOUND, connection=redis_client).job_ids == [poll_job_id(listener_id)]


def test_poll_now_with_redis_down_says_so(app_settings, make_user, make_account, make_listener):
    listener_id = make_listener(make_account(receiver_host="mail.example.invalid"), name="Orders")
    down = create_app({**app_settings, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    client = down.test_client()
    assert AuthActions(client).login(make_user("admin").email).status_code == 302
    page = f"/admin/listeners/{listener_id}"
    response = client.post(
        f"{page}/poll", data={"csrf_token": csrf_token(client, page)}, follow_redirects=True
    )
    assert response.status_code == 200
    assert "The job queue (Redis) is unavailable, so Orders cannot be polled now." in (
        response.get_data(as_text=True)
    )
