"""The case type definition and its checks, without an app."""

from __future__ import annotations

import copy

import pytest

from webapp.casetypes import DefinitionError, parse_definition
from webapp.casetypes.definition import STAGE_KEYS, check_values, slugify
from webapp.casetypes.starters import STARTERS
from webapp.casetypes.templating import placeholders, render


def _expense() -> dict:
    return copy.deepcopy(STARTERS["expense-approval"].definition)


def _messages(definition: dict) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(definition)
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize("slug", sorted(STARTERS))
def test_starter_templates_are_valid(slug):
    definition = parse_definition(STARTERS[slug].definition)
    assert definition.stages[0].kind == "work"
    assert definition.to_dict() == parse_definition(definition.to_dict()).to_dict()


def test_unreachable_stage_is_named():
    data = _expense()
    data["stages"][0]["actions"] = [{"name": "Withdraw", "to": "withdrawn"}]
    messages = _messages(data)
    assert (
        "stages[1]: No action leads to the stage 'Manager approval'; connect it from an "
        "earlier stage or remove it." in messages
    )
    assert any("'Payment'" in m for m in messages)


def test_no_resolution_stage():
    data = {
        "stages": [{"name": "Do it", "kind": "work", "actions": [{"name": "Done", "to": "do_it"}]}]
    }
    messages = _messages(data)
    assert "stages: Add a resolution stage so that cases can end." in messages
    assert (
        "stages[0]: Cases in 'Do it' can never be resolved; add an action that leads "
        "towards a resolution stage." in messages
    )


def test_approval_stage_without_approvers():
    data = _expense()
    stage = data["stages"][1]
    stage["approver_source"] = "addresses"
    stage["approvers"] = []
    assert (
        "stages[1].approvers: The approval stage 'Manager approval' has no approvers; add at "
        "least one." in _messages(data)
    )
    stage["approver_source"] = "field"
    stage["approver_field"] = "amount"
    assert (
        "stages[1].approver_field: The field 'Amount' is not an email field; approvers must "
        "come from an email field." in _messages(data)
    )


def test_template_referring_to_an_unknown_field():
    data = _expense()
    data["stages"][1]["notifications"][0]["body"] = "Pay {{ amont }} please"
    (message,) = _messages(data)
    assert message.startswith(
        "stages[1].notifications[0]: The template uses {{ amont }}, which is not a field; "
        "use one of: amount, case_id"
    )


def test_a_half_written_placeholder_in_a_notification_is_refused():
    data = _expense()
    note = data["stages"][1]["notifications"][0]
    note["subject"] = "About {{ case_id"
    note["body"] = "Pay {{ amount }} please, {{requester}"
    assert _messages(data) == [
        "stages[1].notifications[0]: In the template, “{{ case_id” is not a placeholder "
        "(write {{ name }}, with both pairs of braces).",
        "stages[1].notifications[0]: In the template, “{{requester}” is not a placeholder "
        "(write {{ name }}, with both pairs of braces).",
    ]


def test_duplicate_names():
    data = _expense()
    data["fields"].append({"name": "amount", "label": "Again"})
    data["stages"][2]["name"] = "submission"
    data["stages"][0]["actions"].append({"name": "submit!", "to": "withdrawn"})
    messages = _messages(data)
    assert "fields[5]: Two fields are named 'amount'; give each field its own name." in messages
    assert "stages[2]: Two stages are named 'submission'; rename one of them." in messages
    assert any("The action name 'submit!' is used twice in 'Submission'" in m for m in messages)


def test_shape_errors_name_the_key():
    messages = _messages({"fields": [{"name": "x", "type": "colour"}], "stages": "many"})
    assert messages == [
        "fields[0].type: must be one of text, long_text, number, money, date, email, choice "
        "(not 'colour').",
        "stages: must be a list.",
    ]


def test_a_draft_with_problems_can_be_read_without_raising():
    data = _expense()
    data["stages"][1]["approvers"] = []
    data["stages"][1]["approver_source"] = "users"
    definition = parse_definition(data, check=False)
    assert len(definition.problems) == 1


def test_sla_goal_after_deadline_and_bad_hours():
    data = _expense()
    data["stages"][1]["sla_goal_hours"] = 100
    assert "stages[1]: The SLA goal of 'Manager approval' is later than its deadline." in (
        _messages(data)
    )
    data["stages"][1]["sla_goal_hours"] = "soon"
    assert _messages(data) == ["stages[1].sla_goal_hours: must be a number of hours."]


def test_field_values_are_checked_by_type():
    definition = parse_definition(_expense())
    values, errors = check_values(
        definition,
        {
            "amount": "12.345",
            "expense_date": "2026-02-30",
            "category": "Fun",
            "manager_email": "Boss@Example.COM",
        },
        require=True,
    )
    assert errors == {
        "amount": "Enter an amount such as 120 or 120.50 (no currency sign).",
        "expense_date": "Enter a date as YYYY-MM-DD.",
        "category": "Pick one of: Travel, Meals, Equipment, Other.",
    }
    assert values["manager_email"] == "boss@example.com"
    _, errors = check_values(definition, {}, require=True)
    assert errors["amount"] == "Amount is required." and "notes" not in errors


def test_templates_fill_placeholders_only():
    assert placeholders("{{ a }} and {{b}} and {{ a }}") == ["a", "b", "a"]
    assert render("Hi {{ name }}, {{ missing }}{{ name.__class__ }}", {"name": "Ann"}) == (
        "Hi Ann, {{ name.__class__ }}"
    )


def test_slugify():
    assert slugify("Send back!") == "send_back"
    assert slugify("  ") == ""


def test_unknown_keys_are_named_not_ignored():
    data = copy.deepcopy(STARTERS["expense-approval"].definition)
    data["stages"][2]["asignee"] = "admin"
    data["stages"][2]["actions"][0]["too"] = "completed"
    data["fields"][0]["lable"] = "Amount"
    with pytest.raises(DefinitionError) as refused:
        parse_definition(data)
    assert [str(p) for p in refused.value.problems] == [
        "fields[0].lable: unknown key; use name, label, type, required, default, options.",
        "stages[2].asignee: unknown key; use " + ", ".join(STAGE_KEYS) + ".",
        "stages[2].actions[0].too: unknown key; use name, to, require_fields.",
    ]
