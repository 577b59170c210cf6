"""The engine: every stage kind, guards, reject paths, "all" approvals, the diagram."""

from __future__ import annotations

import copy

import pytest

from webapp.casetypes import Actor, CaseActionError, CaseSnapshot, parse_definition, run_action
from webapp.casetypes.diagram import render_svg, safe_label
from webapp.casetypes.engine import available_actions, build_machine, resolve_approvers
from webapp.casetypes.starters import STARTERS

FIELDS = {
    "amount": "120",
    "expense_date": "2026-01-05",
    "category": "Meals",
    "manager_email": "boss@example.com",
}
WORKER = Actor("walt@example.com", "worker")
BOSS = Actor("boss@example.com", "worker")
ADMIN = Actor("root@example.com", "admin")


def _definition(change=None, check=True):
    data = copy.deepcopy(STARTERS["expense-approval"].definition)
    if change:
        change(data)
    # check=False for designs that leave a stage unreachable: fine for the engine, refused
    # only at publication.
    return parse_definition(data, check=check)


def _at(definition, stage, fields=FIELDS, approvals=()):
    approvers = resolve_approvers(definition.stage(stage), fields)
    return CaseSnapshot(stage, fields, tuple(approvals), approvers)


def test_work_stage_action_moves_to_its_target():
    definition = _definition()
    outcome = run_action(definition, _at(definition, "submission"), "submit", WORKER)
    assert (outcome.from_stage, outcome.to_stage, outcome.label) == (
        "submission",
        "manager_approval",
        "Submit",
    )
    assert outcome.moved


def test_required_fields_guard_and_its_opt_out():
    definition = _definition()
    empty = _at(definition, "submission", fields={"amount": "5"})
    with pytest.raises(
        CaseActionError,
        match=r"Fill in Date of the expense, Category, Manager's email before Submit.",
    ):
        run_action(definition, empty, "submit", WORKER)
    assert run_action(definition, empty, "withdraw", WORKER).to_stage == "withdrawn"


def test_approval_any_one_approver():
    definition = _definition()
    snapshot = _at(definition, "manager_approval")
    assert snapshot.approvers == ("boss@example.com",)
    with pytest.raises(CaseActionError, match=r"Only the approvers of Manager approval"):
        run_action(definition, snapshot, "approve", WORKER)
    assert run_action(definition, snapshot, "approve", BOSS).to_stage == "payment"


def test_reject_needs_a_reason_and_goes_to_the_reject_stage():
    definition = _definition()
    snapshot = _at(definition, "manager_approval")
    with pytest.raises(CaseActionError, match=r"Give a reason for the rejection."):
        run_action(definition, snapshot, "reject", BOSS, "  ")
    outcome = run_action(definition, snapshot, "reject", BOSS, "Too expensive")
    assert outcome.to_stage == "rejected"


def test_reject_without_reason_when_not_required_and_custom_target():
    def change(data):
        data["stages"][1]["reason_required"] = False
        data["stages"][1]["reject_to"] = "submission"

    definition = _definition(change, check=False)
    outcome = run_action(definition, _at(definition, "manager_approval"), "reject", BOSS)
    assert outcome.to_stage == "submission"


def test_approval_by_all_waits_for_everyone():
    def change(data):
        stage = data["stages"][1]
        stage.update(
            approver_source="addresses",
            approval_mode="all",
            approvers=["a@example.com", "B@example.com"],
        )

    definition = _definition(change)
    first = run_action(
        definition, _at(definition, "manager_approval"), "approve", Actor("a@example.com", "worker")
    )
    assert not first.moved and first.approvals == ("a@example.com",)
    again = _at(definition, "manager_approval", approvals=first.approvals)
    with pytest.raises(CaseActionError, match=r"You have already approved this stage"):
        run_action(definition, again, "approve", Actor("a@example.com", "worker"))
    assert available_actions(definition, again, Actor("a@example.com", "worker")) == []
    second = run_action(definition, again, "approve", Actor("b@example.com", "worker"))
    assert second.moved and second.to_stage == "payment" and second.approvals == ()


def test_work_queue_and_user_assignment_decide_who_acts():
    def change(data):
        data["stages"][0]["assignee_kind"] = "user"
        data["stages"][0]["assignee"] = "walt@example.com"
        data["stages"][2]["assignee"] = "admin"

    definition = _definition(change)
    with pytest.raises(CaseActionError, match=r"assigned to walt@example.com"):
        run_action(definition, _at(definition, "submission"), "submit", BOSS)
    assert run_action(definition, _at(definition, "submission"), "submit", WORKER).moved
    with pytest.raises(CaseActionError, match=r"in the admin queue"):
        run_action(definition, _at(definition, "payment"), "mark_paid", WORKER)
    assert run_action(definition, _at(definition, "payment"), "mark_paid", ADMIN).moved


def test_a_work_group_queue_lets_its_members_act():
    definition = _definition(
        lambda d: d["stages"][2].update(assignee_kind="group", assignee="Finance")
    )
    member = Actor("fay@example.com", "worker", groups=frozenset({"finance"}))
    with pytest.raises(CaseActionError, match=r"queue of the group Finance; you are not a member"):
        run_action(definition, _at(definition, "payment"), "mark_paid", WORKER)
    assert available_actions(definition, _at(definition, "payment"), WORKER) == []
    assert run_action(definition, _at(definition, "payment"), "mark_paid", member).moved
    assert run_action(definition, _at(definition, "payment"), "mark_paid", ADMIN).moved


def test_a_group_assignee_needs_a_group_name():
    definition = _definition(
        lambda d: d["stages"][2].update(assignee_kind="group", assignee=""), check=False
    )
    assert [str(p) for p in definition.problems] == [
        "stages[2].assignee: Pick the work group that gets the cases."
    ]


def test_designers_do_not_work_cases():
    definition = _definition()
    with pytest.raises(CaseActionError, match=r"Only workers and admins work cases."):
        run_action(
            definition, _at(definition, "submission"), "submit", Actor("d@example.com", "designer")
        )


def test_actions_outside_the_design_are_refused():
    definition = _definition()
    with pytest.raises(
        CaseActionError,
        match=r"Approve is not possible in the stage Submission; possible: Submit, Withdraw.",
    ):
        run_action(definition, _at(definition, "submission"), "approve", ADMIN)
    with pytest.raises(CaseActionError, match=r"The case is resolved"):
        run_action(definition, _at(definition, "completed"), "submit", ADMIN)
    with pytest.raises(CaseActionError, match=r"not possible"):
        run_action(definition, _at(definition, "submission"), "to_completed", ADMIN)


def test_available_actions_by_stage_kind():
    definition = _definition()
    labels = [a.label for a in available_actions(definition, _at(definition, "submission"), WORKER)]
    assert labels == ["Submit", "Withdraw"]
    approval = available_actions(definition, _at(definition, "manager_approval"), BOSS)
    assert [(a.slug, a.reason_required) for a in approval] == [("approve", False), ("reject", True)]
    assert available_actions(definition, _at(definition, "completed"), ADMIN) == []


def test_the_machine_has_no_automatic_transitions():
    definition = _definition()

    class Model:
        stage = "submission"

    machine = build_machine(definition, Model())
    assert not any(name.startswith("to_") for name in machine.events)
    assert set(machine.events) == {
        "submit",
        "withdraw",
        "approve",
        "reject",
        "mark_paid",
        "send_back",
    }


def test_versions_are_independent_definitions():
    old = _definition()
    new = _definition(lambda d: d["stages"][0]["actions"].pop(1), check=False)
    snapshot = _at(old, "submission")
    assert run_action(old, snapshot, "withdraw", WORKER).to_stage == "withdrawn"
    with pytest.raises(CaseActionError):
        run_action(new, snapshot, "withdraw", WORKER)


def test_diagram_highlights_the_current_stage_and_escapes_labels():
    definition = _definition(lambda d: d["stages"][2].update(name='Pay <img src="x"> \\N'))
    svg = render_svg(definition, "Expenses", "manager_approval").decode()
    assert svg.startswith("<?xml") and "<svg" in svg
    assert svg.count("#d6e9ff") == 1
    assert "<img" not in svg
    assert safe_label('<b>"x"\\G\n') == '\u2039b\u203a"x"\\\\G '


def test_diagram_never_uses_stage_keys_as_graphviz_names():
    # A draft imported unpublished keeps keys that were never checked; in Graphviz a name
    # between < and > is HTML, which may name files on the server.
    key = '<<img src="/etc/passwd"/>>'
    definition = _definition(lambda d: d["stages"][0].update(key=key), check=False)
    svg = render_svg(definition, "Expenses", key).decode()
    assert "passwd" not in svg and "img" not in svg
    assert svg.count("#d6e9ff") == 1
