"""The case engine: a `transitions` machine built from a definition fires one action on a case."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from transitions import Machine, MachineError
from transitions.core import EventData

from webapp.casetypes.definition import (
    APPROVAL,
    WORK,
    Definition,
    StageDef,
    field_value_error,
)

OPEN = "open"
RESOLVED = "resolved"
APPROVE = "approve"
REJECT = "reject"


class CaseActionError(ValueError):
    """An action was refused; the message says why, fit to show."""


@dataclass(frozen=True)
class Actor:
    """Who acts: a user's email and role, or the system; and the channel it came through."""

    email: str
    role: str  # admin / worker / designer / system
    channel: str = "web"  # web / email / api / system
    groups: frozenset[str] = frozenset()  # lowercased names of the user's work groups

    @property
    def is_admin(self) -> bool:
        return self.role in ("admin", "system")


@dataclass(frozen=True)
class CaseSnapshot:
    """What the engine needs to know about a case."""

    stage: str
    fields: Mapping[str, str]
    approvals: tuple[str, ...] = ()  # who has approved in the current stage
    approvers: tuple[str, ...] = ()  # who may decide in the current stage


@dataclass(frozen=True)
class ActionChoice:
    slug: str
    label: str
    kind: str  # work / approve / reject
    reason_required: bool = False


@dataclass(frozen=True)
class Outcome:
    """What happened: the service turns this into a stage change, an event and notifications."""

    action: str
    label: str
    from_stage: str
    to_stage: str
    approvals: tuple[str, ...]

    @property
    def moved(self) -> bool:
        return self.from_stage != self.to_stage


def resolve_approvers(stage: StageDef, fields: Mapping[str, str]) -> tuple[str, ...]:
    """The addresses that decide in an approval stage (from the stage, or a case field)."""
    if stage.kind != APPROVAL:
        return ()
    if stage.approver_source == "field":
        value = (fields.get(stage.approver_field) or "").strip().lower()
        return (value,) if value else ()
    return tuple(dict.fromkeys(a.lower() for a in stage.approvers))


def status_of(definition: Definition, stage_key: str) -> str:
    return RESOLVED if definition.stage(stage_key).is_resolution else OPEN


def may_act(stage: StageDef, snapshot: CaseSnapshot, actor: Actor) -> str:
    """Why `actor` may not act on a case in `stage`, or "" when they may."""
    if actor.is_admin:
        return ""
    if stage.kind == WORK:
        if stage.assignee_kind == "user" and actor.email.lower() != stage.assignee.lower():
            return f"{stage.name} is assigned to {stage.assignee}; only they or an admin can act."
        if stage.assignee_kind == "role" and actor.role != stage.assignee:
            return f"{stage.name} is in the {stage.assignee} queue; you are not in that queue."
        if stage.assignee_kind == "group" and stage.assignee.lower() not in actor.groups:
            return (
                f"{stage.name} is in the queue of the group {stage.assignee}; "
                "you are not a member of it."
            )
        if actor.role != "worker":
            return "Only workers and admins work cases."
        return ""
    if stage.kind == APPROVAL:
        if actor.email.lower() not in snapshot.approvers:
            return f"Only the approvers of {stage.name} can approve or reject."
        if actor.email.lower() in snapshot.approvals:
            return "You have already approved this stage; the other approvers still need to."
        return ""
    return "The case is resolved; nothing more can be done."


def available_actions(
    definition: Definition, snapshot: CaseSnapshot, actor: Actor
) -> list[ActionChoice]:
    """The actions `actor` may take now (empty when they may not act)."""
    stage = definition.stage(snapshot.stage)
    if may_act(stage, snapshot, actor):
        return []
    if stage.kind == WORK:
        return [ActionChoice(a.slug, a.name, "work") for a in stage.actions]
    if stage.kind == APPROVAL:
        return [
            ActionChoice(APPROVE, "Approve", "approve"),
            ActionChoice(REJECT, "Reject", "reject", stage.reason_required),
        ]
    return []


class _Case:
    """The model the machine moves; guards read the actor and comment from here."""

    def __init__(self, definition: Definition, snapshot: CaseSnapshot, actor: Actor, comment: str):
        self.definition = definition
        self.snapshot = snapshot
        self.actor = actor
        self.comment = comment
        self.approvals = snapshot.approvals
        self.stage = snapshot.stage


def _current(event: EventData) -> tuple[_Case, StageDef]:
    case = event.model
    assert isinstance(case, _Case)
    return case, case.definition.stage(case.stage)


def _guard_actor(event: EventData) -> bool:
    case, stage = _current(event)
    refusal = may_act(stage, case.snapshot, case.actor)
    if refusal:
        raise CaseActionError(refusal)
    return True


def _guard_required_fields(event: EventData) -> bool:
    case, stage = _current(event)
    action = next(a for a in stage.actions if a.slug == event.event.name)
    if not action.require_fields:
        return True
    missing = []
    for f in case.definition.fields:
        value = case.snapshot.fields.get(f.name, "") or ""
        if field_value_error(f, value):
            missing.append(f.label)
    if missing:
        raise CaseActionError(
            f"Fill in {', '.join(missing)} before {action.name}."
            if len(missing) < 4
            else f"Fill in the required fields ({len(missing)} missing) before {action.name}."
        )
    return True


def _guard_reason(event: EventData) -> bool:
    case, stage = _current(event)
    if stage.reason_required and not case.comment.strip():
        raise CaseActionError("Give a reason for the rejection.")
    return True


def _record_approval(event: EventData) -> bool:
    case, _stage = _current(event)
    email = case.actor.email.lower()
    if email not in case.approvals:
        case.approvals = (*case.approvals, email)
    return True


def _approval_complete(event: EventData) -> bool:
    case, stage = _current(event)
    if stage.approval_mode == "any" or case.actor.is_admin:
        return True
    return set(case.snapshot.approvers) <= set(case.approvals)


def build_machine(definition: Definition, model: Any) -> Machine:
    """The machine for `definition`, moving `model.stage`; no automatic `to_<stage>` triggers."""
    transitions: list[dict[str, Any]] = []
    for stage in definition.stages:
        if stage.kind == WORK:
            for action in stage.actions:
                transitions.append(
                    {
                        "trigger": action.slug,
                        "source": stage.key,
                        "dest": definition.action_target(stage, action),
                        "conditions": [_guard_actor, _guard_required_fields],
                    }
                )
        elif stage.kind == APPROVAL:
            # "all" mode: every approval is recorded; the last one moves the case on, the
            # ones before stay in the stage (an internal transition, dest None).
            transitions.append(
                {
                    "trigger": APPROVE,
                    "source": stage.key,
                    "dest": definition.approve_target(stage),
                    "conditions": [_guard_actor, _record_approval, _approval_complete],
                }
            )
            transitions.append(
                {
                    "trigger": APPROVE,
                    "source": stage.key,
                    "dest": None,
                    "conditions": [_guard_actor, _record_approval],
                }
            )
            transitions.append(
                {
                    "trigger": REJECT,
                    "source": stage.key,
                    "dest": definition.reject_target(stage),
                    "conditions": [_guard_actor, _guard_reason],
                }
            )
    return Machine(
        model=model,
        states=[s.key for s in definition.stages],
        transitions=transitions,
        initial=model.stage,
        auto_transitions=False,
        send_event=True,
        model_attribute="stage",
    )


def run_action(
    definition: Definition, snapshot: CaseSnapshot, action: str, actor: Actor, comment: str = ""
) -> Outcome:
    """Fire `action` on a case; raises CaseActionError when it is not possible or not allowed."""
    stage = definition.stage(snapshot.stage)
    case = _Case(definition, snapshot, actor, comment)
    machine = build_machine(definition, case)
    event = machine.events.get(action)
    if event is None or stage.key not in event.transitions:
        raise CaseActionError(_not_possible(definition, stage, action))
    try:
        event.trigger(case)
    except MachineError:
        raise CaseActionError(_not_possible(definition, stage, action)) from None
    if case.stage != snapshot.stage:
        approvals: tuple[str, ...] = ()
    else:
        approvals = case.approvals
    label = _label(stage, action)
    return Outcome(action, label, snapshot.stage, case.stage, approvals)


def _label(stage: StageDef, action: str) -> str:
    if action in (APPROVE, REJECT):
        return action.capitalize()
    return next((a.name for a in stage.actions if a.slug == action), action)


def _not_possible(definition: Definition, stage: StageDef, action: str) -> str:
    if stage.is_resolution:
        return f"The case is resolved ({stage.name}); no more actions are possible."
    names = [a.name for a in stage.actions] if stage.kind == WORK else ["Approve", "Reject"]
    return (
        f"{action.replace('_', ' ').capitalize()!s} is not possible in the stage {stage.name}; "
        f"possible: {', '.join(names)}."
    )
