"""IDs past the database's range (its `integer` keys stop at 2147483647) name nothing: a URL
with one is a 404, a form value is refused beside its field, a command says what is wrong."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from tests.fixtures.app import both_databases, csrf_token
from tests.support.inbound import make_route, message
from webapp.extensions import db
from webapp.models import ChannelRoute, EmailListener, InboundMessage, User
from webapp.services import channels as channel_service
from webapp.services.users import issue_api_token

# One past PostgreSQL's `integer`, and one past SQLite's 64 bits.
TOO_LARGE = ("2147483648", "99999999999999999999999")
NEW_LISTENER = "/admin/listeners/new"
ID = re.compile(r"<int(\([^)]*\))?:\w+>")
OTHER = re.compile(r"<[^>]+>")


@both_databases
def test_every_url_with_an_id_past_the_range_is_not_found(app, client, login_as):
    login_as("admin")
    requests = []
    for rule in app.url_map.iter_rules():
        if not ID.search(rule.rule):
            continue
        method = "POST" if "POST" in (rule.methods or ()) else "GET"
        for number in TOO_LARGE:
            requests.append((method, OTHER.sub("1", ID.sub(number, rule.rule))))
    assert {
        ("POST", "/api/v1/listeners/2147483648/messages"),
        ("POST", "/admin/listeners/99999999999999999999999"),
        ("POST", "/admin/inbox/2147483648/replay"),
        ("GET", "/admin/inbox/2147483648/message.eml"),
        ("POST", "/case-types/2147483648/from-email"),
        ("POST", "/admin/channels/2147483648/routes/2147483648/up"),
    } <= set(requests)
    answers = {(m, p): client.open(p, method=m).status_code for m, p in requests}
    assert {key: code for key, code in answers.items() if code != 404} == {}


@both_databases
def test_the_http_intake_refuses_a_listener_id_past_the_range_for_good(
    app, client, make_user, make_account, make_case_type
):
    """404, not 500 or "database unavailable" (503), which a mail server would retry for ever."""
    make_route(app, make_account(), make_case_type())
    user = make_user("admin")
    with app.app_context():
        _, secret = issue_api_token(db.session.get(User, user.id), "mail server")
        db.session.commit()
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "message/rfc822"}
    for number in TOO_LARGE:
        response = client.post(
            f"/api/v1/listeners/{number}/messages", headers=headers, data=message()
        )
        assert response.status_code == 404, response.json
        assert response.json["error"] == "not_found"
    with app.app_context():
        assert db.session.scalar(select(func.count(InboundMessage.id))) == 0


@both_databases
def test_the_listener_pages_take_an_account_past_the_range_as_none(
    app, client, login_as, make_account, make_listener
):
    account = make_account(receiver_host="mail.example.invalid")
    listener_id = make_listener(account, name="Support inbox")
    login_as("admin")
    for number in TOO_LARGE:
        for path in (NEW_LISTENER, f"/admin/listeners/{listener_id}"):
            response = client.get(f"{path}?account={number}")
            assert response.status_code == 200
            assert '<form method="post"' in response.get_data(as_text=True)


@both_databases
@pytest.mark.parametrize(
    ("field", "refusal"),
    [
        ("account_id", "Choose an email account from the list."),
        ("rule_id", "Choose a service email rule from the list."),
        ("channel_id", "Choose an email channel from the list."),
    ],
)
def test_a_listener_form_value_past_the_range_is_refused_beside_its_field(
    app, client, login_as, make_account, field, refusal
):
    account = make_account(receiver_host="mail.example.invalid")
    login_as("admin")
    fields = {
        "name": "Support inbox",
        "account_id": str(account),
        "folder": "INBOX",
        "message_format": "both",
        "rule_id": "None",
        "channel_id": "None",
        "poll_interval_seconds": "60",
        "max_batch": "100",
        "after_processing": "mark_read",
        "move_to_folder": "",
        "max_message_bytes": "1048576",
        "enabled": "y",
    }
    for number in TOO_LARGE:
        data = {**fields, field: number, "csrf_token": csrf_token(client, NEW_LISTENER)}
        response = client.post(NEW_LISTENER, data=data)
        assert response.status_code == 400
        page = response.get_data(as_text=True)
        assert page.count(refusal) == 1
    with app.app_context():
        assert db.session.scalar(select(func.count(EmailListener.id))) == 0


def _channel_page(app) -> str:
    """The page of a new channel with no routes."""
    with app.app_context():
        channel = channel_service.save_channel(
            None, name="Triage", mode="first", default_kind="ignore"
        )
        db.session.commit()
        return f"/admin/channels/{channel.id}"


@both_databases
def test_a_channel_target_past_the_range_is_refused_beside_its_field(
    app, client, login_as, make_account, make_case_type
):
    make_route(app, make_account(), make_case_type())
    page = _channel_page(app)
    login_as("admin")
    for number in TOO_LARGE:
        for field, target in (("target_rule", "rule"), ("target_case_type", "case_type")):
            data = {
                "conditions": "subject contains invoice",
                "target": target,
                field: number,
                "csrf_token": csrf_token(client, page),
            }
            response = client.post(f"{page}/routes", data=data)
            assert response.status_code == 400
            refusal = "Choose a rule" if target == "rule" else "Choose a case type"
            assert response.get_data(as_text=True).count(f"{refusal} from the list.") == 1
    with app.app_context():
        assert db.session.scalar(select(func.count(ChannelRoute.id))) == 0


@both_databases
@pytest.mark.parametrize(
    "path",
    [
        "/cases/?assignee={}",
        "/cases/mine?assignee={}",
        "/admin/inbox/?page={}",
        "/admin/outbox/?page={}",
        "/admin/users?page={}",
        "/cases/?after={}_1",
        "/cases/?after=1_{}",
        "/cases/?assignee=%C2%B2{}",
    ],
)
def test_a_list_asked_for_a_number_past_the_range_shows_a_page(app, client, login_as, path):
    login_as("admin")
    for number in TOO_LARGE:
        assert client.get(path.format(number)).status_code == 200


@both_databases
def test_editing_a_route_past_the_range_is_not_found(app, client, login_as):
    page = _channel_page(app)
    login_as("admin")
    assert client.get(page).status_code == 200
    for number in TOO_LARGE:
        assert client.get(f"{page}?edit_route={number}").status_code == 404


@both_databases
@pytest.mark.parametrize(
    "args",
    [["mail", "replay", "{}"], ["listeners", "run", "{}", "--once"]],
    ids=["mail replay", "listeners run"],
)
def test_a_command_says_an_id_past_the_range_is_not_one(app, runner, args):
    for number in (*TOO_LARGE, "0"):
        result = runner.invoke(args=[a.format(number) for a in args])
        assert result.exit_code == 2, result.output
        assert f"{number} is not in the range 1<=x<=2147483647." in result.output
