"""Email channels: the admin pages, the service, and ingesting through a listener's channel."""

from __future__ import annotations

import io
import time

import pytest
from sqlalchemy import func, select

from tests.fixtures.app import both_databases, csrf_token
from tests.support.inbound import load, make_route, message, store
from webapp.extensions import db
from webapp.mail.parse import parse_message
from webapp.models import Case, ChannelRoute, EmailChannel, EmailListener, ServiceEmailRule
from webapp.services import channels as service
from webapp.services import listeners as listener_service
from webapp.services.ingest import ingest_message
from webapp.services.rules import RuleError, delete_rule


def _post(client, path: str, data: dict[str, str], page: str | None = None):
    return client.post(path, data={**data, "csrf_token": csrf_token(client, page or path)})


@pytest.fixture
def setup(app, make_account, make_case_type):
    """An account, the expense case type, a rule opening expense cases and its listener."""
    account_id = make_account()
    type_id = make_case_type()
    listener_id = make_route(app, account_id, type_id)
    with app.app_context():
        rule_id = db.session.scalar(select(ServiceEmailRule.id))
    return {"account": account_id, "type": type_id, "rule": rule_id, "listener": listener_id}


def _channel(
    app, setup, mode: str = "first", default: str = "quarantine", default_id: int | None = None
) -> int:
    """A channel: newsletters ignored, SPAM headers quarantined, taxi subjects to the rule,
    mail from example.org opens a plain expense case; the listener routes through it."""
    with app.app_context():
        channel = service.save_channel(
            None, name="Triage", mode=mode, default_kind=default, default_id=default_id
        )
        service.add_route(
            channel, service.parse_condition_lines("subject contains newsletter"), "ignore", None
        )
        service.add_route(
            channel, service.parse_condition_lines("header:X-Spam equals yes"), "quarantine", None
        )
        service.add_route(
            channel, service.parse_condition_lines("subject regex ^taxi"), "rule", setup["rule"]
        )
        service.add_route(
            channel,
            service.parse_condition_lines("sender_domain equals example.org"),
            "case_type",
            setup["type"],
        )
        listener = db.session.get(EmailListener, setup["listener"])
        listener.rule_id = None
        listener.channel_id = channel.id
        db.session.commit()
        return channel.id


def _ingest(app, raw: bytes, listener_id: int):
    inbound_id = store(app, raw, listener_id)
    with app.app_context():
        ingest_message(inbound_id)
        db.session.commit()
    return load(app, inbound_id)


def _case(app, case_id: int) -> Case:
    with app.app_context():
        case = db.session.get(Case, case_id)
        db.session.expunge(case)
        return case


@both_databases
def test_a_channel_routes_each_message_and_records_why(app, setup):
    _channel(app, setup)
    listener = setup["listener"]

    taxi = _ingest(app, message(), listener)
    assert taxi.status == "processed"
    assert _case(app, taxi.case_id).fields["amount"] == "42.50"  # the rule's mappings
    assert {
        "step": "channel",
        "note": ("Route 3 matched (the subject matches “^taxi”): the rule Expenses by email."),
    } in taxi.decisions

    plain = _ingest(
        app,
        message(subject="Hotel", sender="bob@example.org", message_id="<m2@example.org>"),
        listener,
    )
    assert plain.status == "processed"
    case = _case(app, plain.case_id)
    assert case.subject == "Hotel" and case.requester == "bob@example.org"
    assert not case.fields["amount"]  # a case type alone maps no fields

    news = _ingest(app, message(subject="Our newsletter", message_id="<m3@x.test>"), listener)
    assert news.status == "ignored" and news.case_id is None
    assert news.status_reason == (
        "Ignored by the channel Triage: Route 1 matched (the subject contains “newsletter”): "
        "ignore the message."
    )

    spam = _ingest(
        app, message(subject="Taxi", message_id="<m4@x.test>", headers="X-Spam: yes\r\n"), listener
    )
    assert spam.status == "quarantined"
    assert spam.status_reason.startswith("Quarantined by the channel Triage: Route 2 matched")

    other = _ingest(app, message(subject="Hello", message_id="<m5@x.test>"), listener)
    assert other.status == "quarantined"
    assert "No route matched: the default route, quarantine the message." in other.status_reason
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Case)) == 2


@both_databases
def test_all_matches_mode_opens_one_case_and_records_the_other_matches(app, setup):
    _channel(app, setup, mode="all")
    raw = message(subject="Taxi again", sender="carol@example.org", headers="X-Spam: yes\r\n")
    inbound = _ingest(app, raw, setup["listener"])
    assert inbound.status == "processed"
    assert _case(app, inbound.case_id).fields["amount"] == "42.50"  # route 3, the first to open
    notes = [d["note"] for d in inbound.decisions]
    assert sum(1 for d in inbound.decisions if d["step"] == "channel") == 3
    assert any(n.startswith("Also matched, not followed: Route 2 matched") for n in notes)
    assert any(n.startswith("Also matched, not followed: Route 4 matched") for n in notes)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Case)) == 1


SLOW_REASON = (
    "Quarantined by the channel Triage: Route 5 could not be checked: the expression "
    "“^(a|a)+$” on the subject took longer than 0.2 seconds on this message and was stopped. "
    "Simplify the expression, then replay the message."
)


def _slow_route(app, channel_id: int, rule_id: int) -> None:
    """A fifth route whose expression takes exponential time on a run of a's and a "!"."""
    with app.app_context():
        channel = db.session.get(EmailChannel, channel_id)
        conditions = service.parse_condition_lines("subject regex ^(a|a)+$")
        service.add_route(channel, conditions, "rule", rule_id)
        db.session.commit()


@both_databases
def test_a_condition_that_takes_too_long_quarantines_the_message(app, setup):
    channel_id = _channel(app, setup, default="case_type", default_id=setup["type"])
    _slow_route(app, channel_id, setup["rule"])
    # Exponential: re took seconds on 26 characters, and four times longer for every two more.
    raw = message(subject="a" * 26 + "!")
    started = time.monotonic()
    inbound = _ingest(app, raw, setup["listener"])
    assert time.monotonic() - started < 2
    assert inbound.status == "quarantined" and inbound.case_id is None
    assert inbound.status_reason == SLOW_REASON
    assert {"step": "channel", "note": SLOW_REASON.split(": ", 1)[1]} in inbound.decisions
    # The default route was not taken; text the expression answers at once routes as ever.
    quick = _ingest(app, message(subject="aaaa", message_id="<m2@x.test>"), setup["listener"])
    assert quick.status == "processed"
    assert {
        "step": "channel",
        "note": "Route 5 matched (the subject matches “^(a|a)+$”): the rule Expenses by email.",
    } in quick.decisions


@both_databases
def test_a_reply_through_a_channel_joins_its_case(app, setup):
    _channel(app, setup)
    first = _ingest(app, message(sender="dan@example.org", subject="Hotel"), setup["listener"])
    reference = _case(app, first.case_id).reference
    reply = _ingest(
        app,
        message(sender="dan@example.org", subject=f"Re: Hotel [{reference}]", message_id="<r@x>"),
        setup["listener"],
    )
    assert reply.status == "processed" and reply.case_id == first.case_id


@both_databases
def test_a_reply_that_matches_no_route_joins_its_case_rather_than_the_default_route(
    app, setup, make_case_type, make_case
):
    _channel(app, setup)  # the default route quarantines
    listener = setup["listener"]
    taxi = _ingest(app, message(), listener)  # route 3: the rule Expenses by email
    reference = _case(app, taxi.case_id).reference

    def reply(n: int, subject: str = "Thanks", sender: str = "alice@example.com", headers=""):
        raw = message(subject=subject, sender=sender, message_id=f"<r{n}@x>", headers=headers)
        return _ingest(app, raw, listener)

    thread = "In-Reply-To: <m1@example.com>\r\n"
    answer = reply(1, headers=thread)
    assert (answer.status, answer.case_id) == ("processed", taxi.case_id)
    assert {
        "step": "channel",
        "note": "It answers a case (matched by In-Reply-To): it goes to Expenses by email "
        "rather than the default route.",
    } in answer.decisions
    # The case id in the subject: from the case's requester, not from anyone who types it.
    assert reply(2, subject=f"About [{reference}]").case_id == taxi.case_id
    stranger = reply(3, subject=f"About [{reference}]", sender="mallory@example.net")
    assert (stranger.status, stranger.case_id) == ("quarantined", None)
    assert "No route matched: the default route" in stranger.status_reason
    # A route it matches still decides.
    spam = reply(4, headers=thread + "X-Spam: yes\r\n")
    assert spam.status == "quarantined" and spam.case_id is None
    assert spam.status_reason.startswith("Quarantined by the channel Triage: Route 2 matched")
    # Resolved, with a rule that would open a new case: the default route, not a new case.
    with app.app_context():
        db.session.get(Case, taxi.case_id).status = "resolved"
        db.session.commit()
    late = reply(5, headers=thread)
    assert (late.status, late.case_id) == ("quarantined", None)
    assert count_cases(app) == 1

    # A case of a type none of the channel's rules handles: joined while open, the default
    # route once it is resolved.
    other = make_case(
        make_case_type("Purchase order", "PO"), subject="Chairs", requester="alice@example.com"
    )
    joined = reply(6, subject=f"Re: [{other}]")
    assert joined.status == "processed"
    assert _case(app, joined.case_id).reference == other
    with app.app_context():
        db.session.scalar(select(Case).where(Case.reference == other)).status = "resolved"
        db.session.commit()
    closed = reply(7, subject=f"Re: [{other}]")
    assert closed.status == "quarantined" and closed.case_id is None
    assert "No route matched: the default route, quarantine the message." in closed.status_reason


@both_databases
def test_a_reply_in_the_same_batch_as_its_case_goes_through_the_channels_rule(app, setup):
    from webapp.services.ingest import ingest_batch

    _channel(app, setup)
    listener = setup["listener"]
    ids = [
        store(app, message(), listener),  # route 3 opens the case
        store(
            app,
            message(
                subject="Thanks", message_id="<r@x>", headers="In-Reply-To: <m1@example.com>\r\n"
            ),
            listener,
        ),
    ]
    with app.app_context():
        ingest_batch(ids)
        db.session.commit()
    first, answer = (load(app, i) for i in ids)
    assert (answer.status, answer.case_id) == ("processed", first.case_id)
    assert {
        "step": "channel",
        "note": "It answers a case (matched by In-Reply-To): it goes to Expenses by email "
        "rather than the default route.",
    } in answer.decisions


def count_cases(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Case)) or 0


@both_databases
def test_the_service_refuses_bad_routes_and_changes_nothing(app, setup):
    with app.app_context():
        channel = service.save_channel(None, name="Triage", mode="first", default_kind="ignore")
        with pytest.raises(service.ChannelError, match="Line 2: The regular expression"):
            service.parse_condition_lines("subject contains a\nsubject regex (x")
        with pytest.raises(service.ChannelError) as caught:
            service.parse_condition_lines("subject contains")
        assert caught.value.field_errors == {
            "conditions": "Line 1 needs a field, a comparison and a text."
        }
        with pytest.raises(service.ChannelError) as caught:
            service.add_route(
                channel, [{"field": "subject", "op": "contains", "value": "x"}], "rule", None
            )
        assert caught.value.field_errors == {"target_rule": "Choose a rule from the list."}
        with pytest.raises(service.ChannelError, match="That name is taken"):
            service.save_channel(None, name="Triage", mode="first", default_kind="ignore")
        with pytest.raises(service.ChannelError) as caught:
            service.save_channel(channel, name="Triage", mode="some", default_kind="ignore")
        assert caught.value.field_errors == {"mode": "Choose first match or all matches."}
        assert db.session.scalar(select(func.count()).select_from(ChannelRoute)) == 0


@both_databases
def test_routes_are_reordered_and_removed(app, setup):
    with app.app_context():
        channel = service.save_channel(None, name="Triage", mode="first", default_kind="ignore")
        for word in ("a", "b", "c"):
            service.add_route(
                channel, service.parse_condition_lines(f"subject contains {word}"), "ignore", None
            )
        routes = sorted(channel.routes, key=lambda r: r.position)
        service.move_route(routes[2], -1)
        service.move_route(routes[0], -1)  # already first: stays
        order = [r.conditions[0]["value"] for r in sorted(channel.routes, key=lambda r: r.position)]
        assert order == ["a", "c", "b"]
        service.remove_route(routes[0])
        db.session.commit()
        rows = db.session.execute(
            select(ChannelRoute.position, ChannelRoute.conditions).order_by(ChannelRoute.position)
        ).all()
        assert [(p, c[0]["value"]) for p, c in rows] == [(1, "c"), (2, "b")]


@both_databases
def test_a_listener_routes_to_a_rule_or_a_channel_not_both(app, setup):
    _channel(app, setup)
    with app.app_context():
        listener = db.session.get(EmailListener, setup["listener"])
        channel_id = listener.channel_id
        values = {name: getattr(listener, name) for name in listener_service.FIELDS}
        values["folder"] = "INBOX"
        both = {**values, "rule_id": setup["rule"]}
        errors = listener_service.listener_errors(listener, both)
        assert errors["channel_id"] == "Route to a rule or to a channel, not both: leave one empty."
        errors = listener_service.listener_errors(listener, {**values, "channel_id": 9999})
        assert errors["channel_id"] == "Choose an email channel from the list."
        assert "channel_id" not in listener_service.listener_errors(listener, values)
        with pytest.raises(
            service.ChannelError,
            match=r"^The listener .+ routes through this channel; change it first\.$",
        ):
            service.delete_channel(db.session.get(EmailChannel, channel_id))


def test_admin_builds_a_channel_in_the_browser(app, client, login_as, setup):
    login_as("admin")
    response = _post(
        client, "/admin/channels/new", {"name": "Triage", "mode": "first", "default": "ignore"}
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    with app.app_context():
        channel_id = db.session.scalar(select(EmailChannel.id))
    page_path = f"/admin/channels/{channel_id}"
    add = f"{page_path}/routes"

    bad = _post(client, add, {"conditions": "subject regex (x", "target": "ignore"}, page_path)
    assert bad.status_code == 400
    assert "Line 1: The regular expression “(x” is not valid" in bad.get_data(as_text=True)
    no_rule = _post(client, add, {"conditions": "subject contains x", "target": "rule"}, page_path)
    assert "Choose a rule from the list." in no_rule.get_data(as_text=True)

    for line, target, extra in (
        ("subject contains newsletter", "ignore", {}),
        ("header:X-Spam equals yes", "rule", {"target_rule": str(setup["rule"])}),
    ):
        response = _post(client, add, {"conditions": line, "target": target, **extra}, page_path)
        assert response.status_code == 302
    page = client.get(page_path).get_data(as_text=True)
    assert "subject contains newsletter" in page and "header:X-Spam equals yes" in page
    assert "Rule Expenses by email" in page
    # The rules list names the channel that routes to a rule, as it names listeners.
    rules = client.get("/admin/rules/").get_data(as_text=True)
    row = rules[rules.index("Expenses by email") :].split("</tr>", 1)[0]
    assert "<div>Channel Triage</div>" in row
    with app.app_context():
        second = db.session.scalar(select(ChannelRoute.id).where(ChannelRoute.position == 2))
    assert _post(client, f"{page_path}/routes/{second}/up", {}, page_path).status_code == 302
    with app.app_context():
        assert db.session.get(ChannelRoute, second).position == 1
    assert _post(client, f"{page_path}/routes/{second}/delete", {}, page_path).status_code == 302
    listing = client.get("/admin/channels/").get_data(as_text=True)
    assert "Triage" in listing and "First match" in listing and "No listener" in listing
    assert 'href="/admin/channels/"' in listing  # the Admin menu entry

    assert _post(client, f"{page_path}/delete", {}, page_path).status_code == 302
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(EmailChannel)) == 0


def test_channel_pages_are_for_admins_only(client, login_as):
    login_as("designer")
    for path in ("/admin/channels/", "/admin/channels/new"):
        assert client.get(path).status_code == 403


def test_the_rule_tester_shows_the_channel_routing_and_saves_nothing(app, client, login_as, setup):
    channel_id = _channel(app, setup)
    login_as("admin")
    token = csrf_token(client, "/admin/rules/test")

    def test(raw: bytes, **choice: str):
        return client.post(
            "/admin/rules/test",
            data={"csrf_token": token, **choice, "message": (io.BytesIO(raw), "m.eml")},
            content_type="multipart/form-data",
        )

    page = test(message(), channel_id=str(channel_id)).get_data(as_text=True)
    assert "Channel routing" in page and "New case" in page
    assert "Route 3 matched (the subject matches “^taxi”): the rule Expenses by email." in page
    assert "42.50" in page
    page = test(message(subject="newsletter"), channel_id=str(channel_id)).get_data(as_text=True)
    assert "Ignored by the channel Triage" in page
    page = test(message(subject="Hello"), channel_id=str(channel_id), rule_id=str(setup["rule"]))
    assert "No route matched: the default route, quarantine the message." in page.get_data(
        as_text=True
    )
    assert test(message(), channel_id="", rule_id="").status_code == 400
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Case)) == 0


def test_the_rule_tester_stops_a_condition_that_takes_too_long(app, client, login_as, setup):
    channel_id = _channel(app, setup)
    _slow_route(app, channel_id, setup["rule"])
    login_as("admin")
    token = csrf_token(client, "/admin/rules/test")
    started = time.monotonic()
    response = client.post(
        "/admin/rules/test",
        data={
            "csrf_token": token,
            "channel_id": str(channel_id),
            "message": (io.BytesIO(message(subject="a" * 26 + "!")), "m.eml"),
        },
        content_type="multipart/form-data",
    )
    assert time.monotonic() - started < 2
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Quarantine" in page and SLOW_REASON in page


@both_databases
def test_a_rule_a_channel_routes_to_is_not_deleted(app, setup):
    _channel(app, setup)
    with app.app_context():
        rule = db.session.get(ServiceEmailRule, setup["rule"])
        with pytest.raises(
            RuleError, match=r"^The email channel Triage routes to this rule; change it first\.$"
        ):
            delete_rule(rule)


def test_the_listener_form_picks_a_channel_instead_of_a_rule(
    app, client, login_as, setup, make_account
):
    channel_id = _channel(app, setup)
    account = make_account(account_id="other", receiver_host="mail.example.invalid")
    login_as("admin")
    new = "/admin/listeners/new"
    fields = {
        "name": "Triage inbox",
        "account_id": str(account),
        "folder": "INBOX",
        "message_format": "both",
        "rule_id": str(setup["rule"]),
        "channel_id": str(channel_id),
        "poll_interval_seconds": "60",
        "max_batch": "100",
        "after_processing": "mark_read",
        "max_message_bytes": "1048576",
        "enabled": "y",
    }
    both = _post(client, new, fields)
    assert both.status_code == 400
    assert "Route to a rule or to a channel, not both" in both.get_data(as_text=True)
    assert _post(client, new, {**fields, "rule_id": "None"}).status_code == 302
    with app.app_context():
        listener = db.session.scalar(
            select(EmailListener).where(EmailListener.name == "Triage inbox")
        )
        assert (listener.rule_id, listener.channel_id) == (None, channel_id)


@both_databases
def test_a_route_is_edited_in_its_place(app, setup):
    with app.app_context():
        channel = service.save_channel(None, name="Triage", mode="first", default_kind="ignore")
        for word in ("a", "b"):
            service.add_route(
                channel, service.parse_condition_lines(f"subject contains {word}"), "ignore", None
            )
        second = sorted(channel.routes, key=lambda r: r.position)[1]
        conditions = service.parse_condition_lines("sender_domain equals example.org\nbody regex x")
        assert service.update_route(second, conditions, "rule", setup["rule"]) is True
        assert service.update_route(second, conditions, "rule", setup["rule"]) is False
        with pytest.raises(service.ChannelError) as caught:
            service.update_route(second, conditions, "case_type", None)
        assert caught.value.field_errors == {
            "target_case_type": "Choose a case type with a published version."
        }
        with pytest.raises(service.ChannelError, match="at least one condition"):
            service.update_route(second, [], "ignore", None)
        db.session.commit()
        rows = db.session.execute(
            select(ChannelRoute.position, ChannelRoute.target_kind, ChannelRoute.rule_id).order_by(
                ChannelRoute.position
            )
        ).all()
        assert [tuple(r) for r in rows] == [(1, "ignore", None), (2, "rule", setup["rule"])]
        assert service.condition_line(second.conditions[0]) == "sender_domain equals example.org"
        # The edited route routes: mail from example.org now takes the rule.
        routed = service.route(
            channel, parse_message(message(subject="Hello", sender="x@example.org", body="x"))
        )
        assert routed.first is not None and routed.first.route.position == 2


def test_admin_edits_a_route_on_the_channel_page(app, client, auth, login_as, setup):
    """The route keeps its place and id; a refused edit changes nothing; admins only."""
    with app.app_context():
        channel = service.save_channel(None, name="Triage", mode="first", default_kind="ignore")
        route = service.add_route(
            channel, service.parse_condition_lines("subject contains invoice"), "ignore", None
        )
        db.session.commit()
        channel_id, route_id = channel.id, route.id
    login_as("admin")
    page_path = f"/admin/channels/{channel_id}"
    editing = client.get(f"{page_path}?edit_route={route_id}").get_data(as_text=True)
    assert "Edit route 1" in editing and "Save route" in editing
    assert "subject contains invoice</textarea>" in editing
    assert client.get(f"{page_path}?edit_route=9999").status_code == 404

    edit = f"{page_path}/routes/{route_id}"
    bad = _post(client, edit, {"conditions": "subject regex (x", "target": "ignore"}, page_path)
    assert bad.status_code == 400
    text = bad.get_data(as_text=True)
    assert "Line 1: The regular expression “(x” is not valid" in text and "Edit route 1" in text
    no_rule = _post(client, edit, {"conditions": "subject contains x", "target": "rule"}, page_path)
    assert "Choose a rule from the list." in no_rule.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(ChannelRoute, route_id).conditions[0]["value"] == "invoice"

    fields = {
        "conditions": "subject contains bill\nheader:X-Priority equals 1",
        "target": "rule",
        "target_rule": str(setup["rule"]),
    }
    saved = _post(client, edit, fields, page_path)
    assert saved.status_code == 302
    page = client.get(page_path).get_data(as_text=True)
    assert "Saved route 1." in page
    assert "subject contains bill" in page and "header:X-Priority equals 1" in page
    assert "Rule Expenses by email" in page and "subject contains invoice" not in page
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ChannelRoute)) == 1
        assert db.session.get(ChannelRoute, route_id).position == 1

    auth.logout()
    login_as("designer")
    assert client.get(f"{page_path}?edit_route={route_id}").status_code == 403
