"""Rule pages: create and edit with mappings checked on save, delete, and the rule tester."""

from __future__ import annotations

import html
import io
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.fixtures.app import both_databases, csrf_token
from tests.support.inbound import load, message, store
from webapp.extensions import db
from webapp.models import Case, EmailListener, InboundMessage, OutboundMessage, ServiceEmailRule
from webapp.services.ingest import ingest_message
from webapp.services.rules import RuleData, RuleError, save_rule

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "inbound"


def _form(type_id: int, **overrides: str) -> dict[str, str]:
    data = {
        "name": "Expenses by email",
        "action": "create_case",
        "case_type_id": str(type_id),
        "mappings": "amount body_key Amount\ncategory subject_regex \\[(?P<category>\\w+)\\]",
        "resolved_policy": "reopen",
        "ack_subject": "",
        "ack_body": "",
        "stage_action": "",
        "max_attachments": "5",
        "max_attachment_bytes": "1000000",
    }
    data.update(overrides)
    return data


def _post(client, path: str, data: dict[str, str]):
    return client.post(path, data={**data, "csrf_token": csrf_token(client, path)})


def test_admin_creates_and_edits_a_rule_with_field_mappings(app, client, login_as, make_case_type):
    login_as("admin")
    type_id = make_case_type()
    response = _post(client, "/admin/rules/new", _form(type_id))
    assert response.status_code == 302, response.get_data(as_text=True)
    listing = client.get("/admin/rules/").get_data(as_text=True)
    assert "Expenses by email" in listing and "Opens Expense approval cases" in listing
    with app.app_context():
        rule = db.session.scalar(select(ServiceEmailRule))
        assert rule.field_mappings == [
            {"field": "amount", "source": "body_key", "value": "Amount"},
            {"field": "category", "source": "subject_regex", "value": r"\[(?P<category>\w+)\]"},
        ]
        assert rule.resolved_policy == "reopen"
        rule_id = rule.id
    page = client.get(f"/admin/rules/{rule_id}").get_data(as_text=True)
    assert "amount body_key Amount" in page
    response = _post(client, f"/admin/rules/{rule_id}", _form(type_id, mappings=""))
    assert response.status_code == 302
    with app.app_context():
        assert db.session.get(ServiceEmailRule, rule_id).field_mappings == []


def test_bad_mappings_are_refused_beside_the_field_and_nothing_is_saved(
    app, client, login_as, make_case_type
):
    login_as("admin")
    type_id = make_case_type()
    cases = [
        ("colour header From", "colour is not a field of the case type"),
        ("amount subject_regex (?P<amount>[0-9", "The expression for amount does not compile"),
        ("amount body_regex Total: ([0-9.]+)", "needs a named group (?P&lt;amount&gt;...)"),
        ("amount somewhere Amount", "somewhere is not a source"),
        ("amount", "Line 1 is incomplete."),
    ]
    for mappings, expected in cases:
        response = _post(client, "/admin/rules/new", _form(type_id, mappings=mappings))
        assert response.status_code == 400
        assert expected in response.get_data(as_text=True), mappings
    unpublished = make_case_type("Draft only", "DRF", publish=False)
    # Only published case types are offered; the service refuses the others too.
    assert "Draft only" not in client.get("/admin/rules/new").get_data(as_text=True)
    with app.app_context(), pytest.raises(RuleError, match="with a published version"):
        save_rule(None, RuleData("Drafts", "create_case", unpublished))
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ServiceEmailRule)) == 0


def test_a_rule_is_deleted(app, client, login_as, make_case_type):
    login_as("admin")
    type_id = make_case_type()
    _post(client, "/admin/rules/new", _form(type_id))
    with app.app_context():
        rule_id = db.session.scalar(select(ServiceEmailRule.id))
    token = csrf_token(client, f"/admin/rules/{rule_id}")
    response = client.post(f"/admin/rules/{rule_id}/delete", data={"csrf_token": token})
    assert response.status_code == 302
    with app.app_context():
        assert db.session.get(ServiceEmailRule, rule_id) is None


def _test_message(client, rule_id: int, raw: bytes):
    token = csrf_token(client, "/admin/rules/test")
    return client.post(
        "/admin/rules/test",
        data={
            "csrf_token": token,
            "rule_id": str(rule_id),
            "message": (io.BytesIO(raw), "message.eml"),
        },
        content_type="multipart/form-data",
    )


def test_the_rule_tester_shows_what_would_happen_and_changes_nothing(
    app, client, login_as, make_case_type
):
    login_as("admin")
    type_id = make_case_type()
    _post(client, "/admin/rules/new", _form(type_id, ack_subject="Thanks", send_ack="y"))
    with app.app_context():
        rule_id = db.session.scalar(select(ServiceEmailRule.id))

    page = _test_message(client, rule_id, message(subject="[Travel] Taxi")).get_data(as_text=True)
    assert "New case" in page and "Opens a new case." in page
    assert "Amount" in page and "42.50" in page and "Travel" in page

    page = _test_message(client, rule_id, message(body="Amount: lots\n")).get_data(as_text=True)
    assert "Quarantine" in page
    assert "Amount: &#39;lots&#39; does not fit." in page

    raw = (GOLDEN / "auto_reply_rfc3834.eml").read_bytes()
    page = _test_message(client, rule_id, raw).get_data(as_text=True)
    assert "Ignored" in page and "auto_reply" in page

    with app.app_context():
        for model in (Case, InboundMessage, OutboundMessage):
            assert db.session.scalar(select(func.count()).select_from(model)) == 0


SLOW_NOTES = "notes body_regex ^(?P<notes>(a|a)+)$"  # exponential on "aaa…a!"
SLOW_REASON = (
    "A mapped field does not fit: Notes: the body expression for notes took longer than 0.2 "
    "seconds on this message and was stopped. Simplify it in the rule Expenses by email, then "
    "replay the message."
)


@both_databases
def test_a_mapping_expression_that_takes_too_long_quarantines_the_message(
    app, client, login_as, make_case_type, make_account
):
    login_as("admin")
    type_id = make_case_type()
    # Two slow expressions: the second is not tried once the first was stopped.
    slow_category = "category body_regex ^(?P<category>(a|a)+)$"
    mappings = f"amount body_key Amount\n{SLOW_NOTES}\n{slow_category}"
    assert _post(client, "/admin/rules/new", _form(type_id, mappings=mappings)).status_code == 302
    with app.app_context():
        rule_id = db.session.scalar(select(ServiceEmailRule.id))
        listener = EmailListener(name="Expenses", account_id=make_account(), rule_id=rule_id)
        db.session.add(listener)
        db.session.commit()
        listener_id = listener.id
    # Exponential: re took seconds on 26 characters, and four times longer for every two more.
    raw = message(body="Amount: 42.50\n" + "a" * 26 + "!\n")

    started = time.monotonic()
    page = _test_message(client, rule_id, raw).get_data(as_text=True)
    assert time.monotonic() - started < 2
    assert "Quarantine" in page and SLOW_REASON in page

    inbound_id = store(app, raw, listener_id)
    started = time.monotonic()
    with app.app_context():
        ingest_message(inbound_id)
        db.session.commit()
    assert time.monotonic() - started < 2
    inbound = load(app, inbound_id)
    assert inbound.status == "quarantined" and inbound.case_id is None
    assert inbound.status_reason == SLOW_REASON


def test_nested_repeats_in_a_mapping_are_answered_at_once(app, client, login_as, make_case_type):
    login_as("admin")
    type_id = make_case_type()
    mappings = "amount body_key Amount\nnotes body_regex ^(?P<notes>(a+)+)$"
    assert _post(client, "/admin/rules/new", _form(type_id, mappings=mappings)).status_code == 302
    with app.app_context():
        rule_id = db.session.scalar(select(ServiceEmailRule.id))
    started = time.monotonic()
    page = _test_message(client, rule_id, message(body="Amount: 1\n" + "a" * 30 + "!\n"))
    assert time.monotonic() - started < 2
    assert "Opens a new case." in page.get_data(as_text=True)
    page = _test_message(client, rule_id, message(body="Amount: 1\n" + "a" * 30 + "\n"))
    assert '<td class="text-break">' + "a" * 30 + "</td>" in page.get_data(as_text=True)


@pytest.mark.parametrize("control", ["\x1b[31m", "\x00", "\x7f", "\x07"])
def test_control_characters_in_the_acknowledgement_subject_are_refused(
    app, client, login_as, make_case_type, control
):
    login_as("admin")
    type_id = make_case_type()
    subject = f"Thanks{control} {{{{ case_id }}}}"
    response = _post(client, "/admin/rules/new", _form(type_id, send_ack="y", ack_subject=subject))
    assert response.status_code == 400
    assert (
        "The subject must be a single line without control characters. Remove them (pasted "
        "text can carry them)."
    ) in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ServiceEmailRule)) == 0


def test_line_breaks_in_the_acknowledgement_subject_become_spaces(
    app, client, login_as, make_case_type
):
    login_as("admin")
    subject = "Thanks\r\nBcc: evil@example.com {{ case_id }}"
    form = _form(make_case_type(), send_ack="y", ack_subject=subject)
    assert _post(client, "/admin/rules/new", form).status_code == 302
    with app.app_context():
        rule = db.session.scalar(select(ServiceEmailRule))
        assert rule.ack_subject == "Thanks Bcc: evil@example.com {{ case_id }}"


ACK_NAMES = (
    "{{ case_id }}, {{ subject }}, {{ requester }}, {{ amount }}, {{ expense_date }}, "
    "{{ category }}, {{ manager_email }}, {{ notes }}"
)


@pytest.mark.parametrize(
    ("field", "text", "error"),
    [
        (
            "ack_subject",
            "Got {{ amonut }} at {{ stage }} for {{ case_type }}",
            "Unknown placeholder {{ amonut }}, {{ stage }}, {{ case_type }}: "
            f"use one of: {ACK_NAMES}.",
        ),
        (
            "ack_subject",
            "Received {{ case_id",
            "“{{ case_id” is not a placeholder (write {{ name }}, with both pairs of braces): "
            f"use one of: {ACK_NAMES}.",
        ),
        (
            "ack_subject",
            "Got {{ amonut }} for {{ case_id",
            "Unknown placeholder {{ amonut }}; “{{ case_id” is not a placeholder (write "
            f"{{{{ name }}}}, with both pairs of braces): use one of: {ACK_NAMES}.",
        ),
        (
            "ack_body",
            "Dear {{ requestor }}, case {{ case_id }} is open.",
            f"Unknown placeholder {{{{ requestor }}}}: use one of: {ACK_NAMES}.",
        ),
        (
            "ack_body",
            "Your case {{ case id }} is open.\nYour case {{case_id} is open.",
            "“{{ case id }}”, “{{case_id}” are not placeholders (write {{ name }}, with both "
            f"pairs of braces): use one of: {ACK_NAMES}.",
        ),
    ],
)
def test_acknowledgement_placeholders_are_checked_on_save(
    app, client, login_as, make_case_type, field, text, error
):
    login_as("admin")
    form = _form(make_case_type(), send_ack="y", **{"ack_subject": "Thanks", field: text})
    response = _post(client, "/admin/rules/new", form)
    assert response.status_code == 400
    assert html.escape(error, quote=False) in response.get_data(as_text=True)
    good = _form(
        make_case_type("Travel", "TRV"),
        name="Travel",
        send_ack="y",
        ack_subject="Got {{ amount }} for {{ case_id }}",
        ack_body="Dear {{ requester }}, {{ subject }} is {{ case_id }}: {{ notes }}",
    )
    assert _post(client, "/admin/rules/new", good).status_code == 302


@pytest.mark.parametrize(
    ("overrides", "field_error"),
    [
        (
            {"mappings": "amount body_key Amount"},
            "A rule that only updates cases maps no fields: fields are set when a case is "
            "opened. Remove the mappings, or let the rule open cases.",
        ),
        (
            {"mappings": "", "send_ack": "y", "ack_subject": "Thanks"},
            "An acknowledgement goes out when a case is opened, which a rule that only updates "
            "cases never does. Turn it off, or let the rule open cases.",
        ),
    ],
)
def test_an_update_only_rule_refuses_what_only_a_new_case_uses(
    app, client, login_as, make_case_type, overrides, field_error
):
    login_as("admin")
    form = _form(make_case_type(), action="update_case", **overrides)
    response = _post(client, "/admin/rules/new", form)
    assert response.status_code == 400
    assert html.escape(field_error, quote=False) in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ServiceEmailRule)) == 0


def test_the_stage_action_must_be_one_the_case_type_has(app, client, login_as, make_case_type):
    login_as("admin")
    type_id = make_case_type()
    response = _post(client, "/admin/rules/new", _form(type_id, stage_action="sbumit"))
    assert response.status_code == 400
    assert (
        "No stage of Expense approval has the action “sbumit”: use one of approve, mark_paid, "
        "reject, send_back, submit, withdraw."
    ) in response.get_data(as_text=True)
    # The action's name, as the designer shows it, is taken as its key.
    assert (
        _post(client, "/admin/rules/new", _form(type_id, stage_action="Submit")).status_code == 302
    )
    with app.app_context():
        assert db.session.scalar(select(ServiceEmailRule.stage_action)) == "submit"


@pytest.mark.parametrize("pattern", ["[[:digit:]]+", "(?P<amount>[0-9]+){e<=1}"])
def test_spellings_regular_expression_engines_read_differently_are_refused(
    app, client, login_as, make_case_type, pattern
):
    login_as("admin")
    form = _form(make_case_type(), mappings=f"amount body_regex (?P<amount>{pattern})")
    response = _post(client, "/admin/rules/new", form)
    assert response.status_code == 400
    assert (
        "it uses [:…:] or {e&lt;=…}, which regular expression engines read differently; write "
        "the characters out instead, such as [0-9] for [[:digit:]]"
    ) in response.get_data(as_text=True)


def test_an_update_only_rule_saved_with_mappings_before_can_still_be_renamed(
    app, client, login_as, make_case_type
):
    login_as("admin")
    type_id = make_case_type()
    mappings = [{"field": "amount", "source": "body_key", "value": "Amount"}]
    with app.app_context():
        rule = ServiceEmailRule(
            name="Replies",
            action="update_case",
            case_type_id=type_id,
            field_mappings=mappings,
            send_ack=True,
            ack_subject="Thanks",
        )
        db.session.add(rule)
        db.session.commit()
        path = f"/admin/rules/{rule.id}"
    form = _form(
        type_id,
        name="Replies to cases",
        action="update_case",
        mappings="amount body_key Amount",
        send_ack="y",
        ack_subject="Thanks",
    )
    assert _post(client, path, form).status_code == 302
    # Adding a mapping is what is refused.
    form["mappings"] += "\ncategory body_key Category"
    assert _post(client, path, form).status_code == 400


def test_a_stage_action_is_stored_as_its_key_even_without_a_case_type(app, client, login_as):
    login_as("admin")
    form = _form(0, action="update_case", case_type_id="", mappings="", stage_action="Send back")
    assert _post(client, "/admin/rules/new", form).status_code == 302
    with app.app_context():
        assert db.session.scalar(select(ServiceEmailRule.stage_action)) == "send_back"


def test_the_rule_tester_asks_for_a_file(client, login_as, make_case_type):
    login_as("admin")
    token = csrf_token(client, "/admin/rules/test")
    response = client.post("/admin/rules/test", data={"csrf_token": token})
    assert response.status_code == 400


def test_rule_pages_are_for_admins_only(client, login_as):
    login_as("designer")
    for path in ("/admin/rules/", "/admin/rules/new", "/admin/rules/test"):
        assert client.get(path).status_code == 403
