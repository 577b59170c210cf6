"""Receiving with Microsoft Graph from the local Graph server: delta queries, raw MIME,
immutable ids, and after-processing seen on the server."""

from __future__ import annotations

import time

from sqlalchemy import select

from tests.fixtures.app import both_databases
from tests.fixtures.graph import GRAPH_UPN as UPN
from tests.fixtures.listeners import make_raw
from tests.integration.test_listeners import _fields, _post
from tests.integration.test_receiving import Batches, run, stored
from webapp.extensions import db
from webapp.models import EmailAccount, EmailListener
from webapp.services.receiving import server_folders


def _folder_of(graph_server) -> dict[str, str]:
    return {m.immutable_id: m.folder for m in graph_server.mailbox(UPN)}


@both_databases
def test_each_message_is_stored_once_under_its_immutable_id(
    app, graph_server, graph_account, make_listener
):
    raws = [make_raw(f"Order {n}") for n in range(5)]
    ids = [graph_server.deliver(UPN, raw) for raw in raws]
    # Two per page: the poll follows @odata.nextLink to the @odata.deltaLink.
    listener_id = make_listener(graph_account, max_batch=2)
    batches = Batches()

    result = run(app, listener_id, batches)

    assert result.ok, result.errors
    assert result.summary() == "fetched 5, stored 5, duplicates 0"
    rows = stored(app)
    assert sorted((r.graph_id, r.raw) for r in rows) == sorted(zip(ids, raws, strict=True))
    assert {r.source for r in rows} == {"graph"}
    assert {r.status for r in rows} == {"received"}
    assert [len(call) for call in batches.calls] == [2, 2, 1]
    # Each message was marked read on the server, and each request asked for immutable ids.
    assert all(m.is_read for m in graph_server.mailbox(UPN))
    assert all('IdType="ImmutableId"' in p for p in graph_server.state.prefer_headers)
    with app.app_context():
        link = db.session.get(EmailListener, listener_id).graph_delta_link
    assert link and "$deltatoken=" in link

    # The same delta link: nothing is stored again (the messages marked read come back
    # once as changed and are recognised), then a new message is picked up.
    again = run(app, listener_id)
    assert again.ok, again.errors
    assert again.stored == 0 and again.duplicates == 5
    assert run(app, listener_id).summary() == "fetched 0, stored 0, duplicates 0"
    new_id = graph_server.deliver(UPN, make_raw("Order 6"))
    assert run(app, listener_id).summary() == "fetched 1, stored 1, duplicates 0"
    assert [r.graph_id for r in stored(app)][-1] == new_id
    assert len(stored(app)) == 6


def test_a_poll_with_a_time_limit_stops_between_messages_and_keeps_the_old_delta_link(
    app, graph_server, graph_account, make_listener
):
    ids = [graph_server.deliver(UPN, make_raw(f"Order {n}")) for n in range(5)]
    listener_id = make_listener(graph_account, max_batch=2)

    # Each message is a request of its own: past the limit, one message and no more.
    first = run(app, listener_id, until=time.monotonic())
    assert (first.summary(), first.more) == ("fetched 1, stored 1, duplicates 0", True)
    assert sum(m.is_read for m in graph_server.mailbox(UPN)) == 1
    with app.app_context():
        assert db.session.get(EmailListener, listener_id).graph_delta_link is None
    # The next poll reads the first page again, finds one stored, and goes on to the end.
    rest = run(app, listener_id)
    assert (rest.summary(), rest.more) == ("fetched 5, stored 4, duplicates 1", False)
    assert sorted(r.graph_id for r in stored(app)) == sorted(ids)
    with app.app_context():
        assert "$deltatoken=" in db.session.get(EmailListener, listener_id).graph_delta_link
    # Past the limit with one page to read: the delta link is reached, nothing more waits.
    run(app, listener_id)  # the messages marked read come back once, as changed
    graph_server.deliver(UPN, make_raw("Order 6"))
    last = run(app, listener_id, until=time.monotonic())
    assert (last.summary(), last.more) == ("fetched 1, stored 1, duplicates 0", False)


def test_delete_and_move_are_done_on_the_server(app, graph_server, graph_account, make_listener):
    deleted = graph_server.deliver(UPN, make_raw("To delete"))
    listener_id = make_listener(graph_account, after_processing="delete")
    assert run(app, listener_id).summary() == "fetched 1, stored 1, duplicates 0"
    assert deleted not in _folder_of(graph_server)

    moved = graph_server.deliver(UPN, make_raw("To move"))
    with app.app_context():
        db.session.get(EmailListener, listener_id).after_processing = "move"
        db.session.get(EmailListener, listener_id).move_to_folder = "Archive"
        db.session.commit()
    assert run(app, listener_id).summary() == "fetched 1, stored 1, duplicates 0"
    # Moved, and still known by the id that was stored: immutable ids survive a move.
    assert _folder_of(graph_server) == {moved: "Archive"}
    assert [r.graph_id for r in stored(app)] == [deleted, moved]
    assert run(app, listener_id).summary() == "fetched 0, stored 0, duplicates 0"


def test_an_expired_delta_link_lists_the_folder_again(
    app, graph_server, graph_account, make_listener
):
    first = graph_server.deliver(UPN, make_raw("Before"))
    listener_id = make_listener(graph_account)
    assert run(app, listener_id).summary() == "fetched 1, stored 1, duplicates 0"
    # Another message arrives, then Graph forgets the delta state: the whole folder is listed
    # again and only the new message is stored.
    second = graph_server.deliver(UPN, make_raw("After"))
    graph_server.state.delta_tokens.clear()
    result = run(app, listener_id)
    assert result.ok, result.errors
    assert result.summary() == "fetched 2, stored 1, duplicates 1"
    assert [r.graph_id for r in stored(app)] == [first, second]


def test_an_unknown_folder_is_a_poll_error(app, graph_server, graph_account, make_listener):
    listener_id = make_listener(graph_account, folder="Nowhere")
    result = run(app, listener_id)
    assert result.errors == [f"The mailbox {UPN} has no folder Nowhere."]
    with app.app_context():
        listener = db.session.get(EmailListener, listener_id)
        assert listener.last_poll_ok is False
        assert listener.last_error == result.errors[0]


def test_listener_form_offers_the_mailbox_folders(
    app, client, login_as, graph_server, graph_account
):
    with app.app_context():
        account = db.session.get(EmailAccount, graph_account)
        assert server_folders(account) == ["Inbox", "Archive", "Sent Items"]
    login_as("admin")
    html = client.get(f"/admin/listeners/new?account={graph_account}").get_data(as_text=True)
    assert '<option value="Archive">Archive</option>' in html

    # Saved from the form: Graph accounts are accepted, and moving to a listed folder too.
    data = _fields(graph_account, folder="Inbox", after_processing="move", move_to_folder="Archive")
    response = _post(client, "/admin/listeners/new", data)
    assert response.status_code == 302, response.get_data(as_text=True)
    with app.app_context():
        listener = db.session.scalars(select(EmailListener)).one()
        assert (listener.folder, listener.move_to_folder) == ("Inbox", "Archive")


def test_cli_polls_a_graph_listener_and_enqueues_ingest(
    app, runner, graph_server, graph_account, make_listener, redis_client
):
    from rq import Queue
    from rq.job import Job

    from workers.queues import INBOUND

    graph_server.deliver(UPN, make_raw("From the command line"))
    listener_id = make_listener(graph_account)
    result = runner.invoke(args=["listeners", "run", str(listener_id), "--once"])
    assert result.exit_code == 0, result.output
    assert result.output == "fetched 1, stored 1, duplicates 0\n"
    # Handed to the ingest workers the same way IMAP hands its batches on: queued, or already
    # taken by a worker listening on this Redis.
    queue = Queue(INBOUND, connection=redis_client)
    job_ids = queue.job_ids
    for registry in (queue.started_job_registry, queue.finished_job_registry):
        job_ids += registry.get_job_ids()
    jobs = [Job.fetch(job_id, connection=redis_client) for job_id in job_ids]
    assert [(job.func_name, job.args) for job in jobs] == [
        ("workers.inbound.ingest_messages", ([r.id for r in stored(app)],))
    ]


def test_folders_below_the_top_level_are_listed_and_watched(
    app, client, login_as, graph_server, graph_account, make_listener
):
    folders = ["Inbox", "Archive", "Inbox/Approvals", "Inbox/Approvals/2026", "Archive/Done"]
    graph_server.add_mailbox(UPN, [*folders, "Notes", "Inbox/Billing", "Inbox/Claims"])
    graph_server.state.folder_page_size = 2  # the top level and Inbox's children: two pages
    with app.app_context():
        account = db.session.get(EmailAccount, graph_account)
        assert server_folders(account) == [
            "Inbox",
            "Inbox/Approvals",
            "Inbox/Approvals/2026",
            "Inbox/Billing",
            "Inbox/Claims",
            "Archive",
            "Archive/Done",
            "Notes",
        ]
    login_as("admin")
    html = client.get(f"/admin/listeners/new?account={graph_account}").get_data(as_text=True)
    assert '<option value="Inbox/Approvals/2026">Inbox/Approvals/2026</option>' in html

    graph_server.deliver(UPN, make_raw("Top level"))
    wanted = graph_server.deliver(UPN, make_raw("Approve this"), folder="Inbox/Approvals")
    listener_id = make_listener(
        graph_account,
        folder="inbox/approvals",  # letter case as typed
        after_processing="move",
        move_to_folder="Archive/Done",
    )
    graph_server.state.folder_requests.clear()
    assert run(app, listener_id).summary() == "fetched 1, stored 1, duplicates 0"
    assert [r.graph_id for r in stored(app)] == [wanted]
    assert _folder_of(graph_server)[wanted] == "Archive/Done"
    # A poll opens only the folders on the way to the two it needs: the top level and Inbox
    # (two pages each) and Archive, not Inbox/Approvals (id-2), whose children it does not need.
    assert sorted(graph_server.state.folder_requests) == [
        "mailFolders",
        "mailFolders",
        "mailFolders/id-0/childFolders",
        "mailFolders/id-0/childFolders",
        "mailFolders/id-1/childFolders",
    ]

    with app.app_context():
        db.session.get(EmailListener, listener_id).folder = "Inbox/Elsewhere"
        db.session.commit()
    assert run(app, listener_id).errors == [f"The mailbox {UPN} has no folder Inbox/Elsewhere."]
