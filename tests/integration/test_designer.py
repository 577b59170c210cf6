"""The case type designer: drafts, validation on save, the diagram, publishing versions."""

from __future__ import annotations

from sqlalchemy import select

from tests.fixtures.app import both_databases, csrf_token
from tests.fixtures.cases import form_data, load_case
from webapp.extensions import db
from webapp.models import CaseType


def _post(client, path, data, page=None, follow=True):
    token = csrf_token(client, page or path)
    return client.post(path, data={"csrf_token": token, **data}, follow_redirects=follow)


def _stage_form(client, type_id, key):
    """The stage form's current values, as the browser would submit them unchanged."""
    return form_data(client.get(f"/case-types/{type_id}/stages/{key}").get_data(as_text=True))


@both_databases
def test_designer_builds_publishes_and_versions_a_case_type(app, client, login_as):
    login_as("designer")
    response = _post(
        client,
        "/case-types/new",
        {"name": "Leave request", "prefix": "lv", "description": "Time off"},
    )
    html = response.get_data(as_text=True)
    assert "Created Leave request." in html
    with app.app_context():
        type_id = db.session.scalar(select(CaseType.id).where(CaseType.prefix == "LV"))

    response = _post(
        client,
        f"/case-types/{type_id}/fields/new",
        {"name": "boss", "label": "Boss", "type": "email", "required": "y"},
    )
    assert "Added the field Boss." in response.get_data(as_text=True)

    response = _post(
        client,
        f"/case-types/{type_id}/stages",
        {"name": "Boss approval", "kind": "approval"},
        page=f"/case-types/{type_id}",
    )
    html = response.get_data(as_text=True)
    assert "Added the stage Boss approval; set it up below." in html

    html = client.get(f"/case-types/{type_id}").get_data(as_text=True)
    assert "Before you can publish, change this:" in html
    assert "The approval stage &#39;Boss approval&#39; has no approvers; add at least one." in html
    assert "No action leads to the stage" in html

    data = _stage_form(client, type_id, "boss_approval")
    data.update(approver_source="field", approver_field="boss", reject_to="")
    response = _post(client, f"/case-types/{type_id}/stages/boss_approval", data)
    assert "Saved the stage Boss approval." in response.get_data(as_text=True)

    data = _stage_form(client, type_id, "intake")
    data.update({"actions-0-name": "Ask", "actions-0-to": "boss_approval"})
    _post(client, f"/case-types/{type_id}/stages/intake", data)
    html = _post(
        client,
        f"/case-types/{type_id}/stages",
        {"name": "Refused", "kind": "resolution"},
        page=f"/case-types/{type_id}",
    ).get_data(as_text=True)
    data = _stage_form(client, type_id, "refused")
    data["resolution"] = "rejected"
    html = _post(client, f"/case-types/{type_id}/stages/refused", data).get_data(as_text=True)
    assert "Before you can publish" not in html, html

    html = _post(
        client, f"/case-types/{type_id}/publish", {}, page=f"/case-types/{type_id}"
    ).get_data(as_text=True)
    assert "Published version 1 of Leave request." in html
    svg = client.get(f"/case-types/{type_id}/versions/1/diagram.svg").get_data(as_text=True)
    assert "Boss approval" in svg and "Ask" in svg and "Refused" in svg

    html = _post(
        client, f"/case-types/{type_id}/publish", {}, page=f"/case-types/{type_id}"
    ).get_data(as_text=True)
    assert "Version 1 already has this definition." in html


@both_databases
def test_running_cases_keep_their_version(app, client, login_as, make_case_type, make_case):
    type_id = make_case_type()
    old = make_case(type_id)
    login_as("designer")
    data = _stage_form(client, type_id, "submission")
    data["name"] = "Claim"
    html = _post(client, f"/case-types/{type_id}/stages/submission", data).get_data(as_text=True)
    assert "The draft has changes that are not published." in html
    new_before_publish = make_case(type_id)
    assert load_case(app, new_before_publish).version.number == 1
    _post(client, f"/case-types/{type_id}/publish", {}, page=f"/case-types/{type_id}")
    new = make_case(type_id)
    assert load_case(app, old).version.number == 1
    assert load_case(app, new).version.number == 2
    with app.app_context():
        from webapp.services.cases import definition_of, find_case

        assert definition_of(find_case(old)).stage("submission").name == "Submission"
        assert definition_of(find_case(new)).stage("submission").name == "Claim"


def test_stage_order_and_removal(app, client, login_as, make_case_type):
    type_id = make_case_type(publish=False)
    login_as("designer")
    page = f"/case-types/{type_id}"
    _post(client, f"/case-types/{type_id}/stages/payment/move", {"value": "up"}, page=page)
    with app.app_context():
        keys = [s["key"] for s in db.session.get(CaseType, type_id).draft["stages"]]
    assert keys[:3] == ["submission", "payment", "manager_approval"]
    _post(client, f"/case-types/{type_id}/stages/payment/remove", {}, page=page)
    html = client.get(page).get_data(as_text=True)
    assert "Payment" not in html.split('id="stages"')[1].split("Stage diagram")[0]
    with app.app_context():
        draft = db.session.get(CaseType, type_id).draft
    assert [s["key"] for s in draft["stages"]][:2] == ["submission", "manager_approval"]


def test_field_and_type_validation_messages(client, login_as, make_case_type):
    type_id = make_case_type(publish=False)
    login_as("designer")
    response = _post(
        client,
        f"/case-types/{type_id}/fields/new",
        {"name": "amount", "label": "Again", "type": "text"},
        follow=False,
    )
    assert response.status_code == 400
    assert "There is already a field named &#39;amount&#39;." in response.get_data(as_text=True)
    response = _post(
        client,
        f"/case-types/{type_id}/fields/new",
        {"name": "Bad Name", "label": "x", "type": "text"},
        follow=False,
    )
    assert "Lowercase letters, digits and _" in response.get_data(as_text=True)
    response = _post(client, "/case-types/new", {"name": "Other", "prefix": "EXP"}, follow=False)
    assert "The prefix EXP is taken by another case type." in response.get_data(as_text=True)
    response = _post(
        client, "/case-types/new", {"name": "expense APPROVAL", "prefix": "EX2"}, follow=False
    )
    assert "already exists" in response.get_data(as_text=True)


def test_template_with_an_unknown_field_is_refused_at_publish(client, login_as, make_case_type):
    type_id = make_case_type(publish=False)
    login_as("designer")
    data = _stage_form(client, type_id, "manager_approval")
    data["notifications-0-subject"] = "Approve {{ amout }}"
    _post(client, f"/case-types/{type_id}/stages/manager_approval", data)
    html = _post(
        client, f"/case-types/{type_id}/publish", {}, page=f"/case-types/{type_id}"
    ).get_data(as_text=True)
    assert "The template uses {{ amout }}, which is not a field" in html
    assert "Published version 1" not in html


def test_starter_templates_can_be_copied(client, login_as):
    login_as("designer")
    html = _post(
        client,
        "/case-types/new",
        {"name": "Buying", "prefix": "BUY", "starter": "purchase-request"},
    ).get_data(as_text=True)
    assert "Budget approval" in html and "Estimated cost" in html


def test_diagram_labels_from_designers_are_inert(app, client, login_as, make_case_type):
    type_id = make_case_type(publish=False)
    login_as("designer")
    data = _stage_form(client, type_id, "submission")
    data["name"] = '<IMG SRC="/etc/passwd"/>'
    data["actions-0-name"] = "<b>Go</b> \\G"
    _post(client, f"/case-types/{type_id}/stages/submission", data)
    svg = client.get(f"/case-types/{type_id}/diagram.svg").get_data(as_text=True)
    assert "<image" not in svg and "passwd" in svg
    assert "<b>" not in svg and "\u2039b\u203aGo\u2039/b\u203a \\G" in svg


def test_stage_hours_that_are_not_numbers_get_one_message_and_keep_the_stage(
    app, client, login_as, make_case_type
):
    type_id = make_case_type(publish=False)
    login_as("designer")
    path = f"/case-types/{type_id}/stages/submission"
    for typed in ("soon", "sNaN", "NaN", "Infinity", "-inf"):
        data = _stage_form(client, type_id, "submission")
        data.update(name="Renamed", sla_goal_hours=typed)
        response = _post(client, path, data)
        assert response.status_code == 400, typed
        html = response.get_data(as_text=True)
        assert html.count("Enter a number.") == 1, typed
        assert "Number must be between" not in html, typed
    data = _stage_form(client, type_id, "submission")
    assert data["name"] == "Submission"
    data.update(sla_goal_hours="")
    assert "Saved the stage Submission." in _post(client, path, data).get_data(as_text=True)
