"""The case type definition: typed objects parsed from a dict, and the checks run on save."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from webapp.casetypes.templating import BUILTIN_NAMES, broken_placeholder_problem, placeholders

WORK = "work"
APPROVAL = "approval"
RESOLUTION = "resolution"
STAGE_KINDS = (WORK, APPROVAL, RESOLUTION)

FIELD_TYPES = ("text", "long_text", "number", "money", "date", "email", "choice")
FIELD_TYPE_LABELS = {
    "text": "Text",
    "long_text": "Long text",
    "number": "Number",
    "money": "Money",
    "date": "Date",
    "email": "Email",
    "choice": "Choice",
}
RESOLUTIONS = ("completed", "rejected", "withdrawn")
APPROVER_SOURCES = ("addresses", "users", "field")
APPROVAL_MODES = ("any", "all")
ASSIGNEE_KINDS = ("none", "user", "role", "group")
QUEUE_ROLES = ("worker", "admin")
RECIPIENT_KINDS = ("requester", "approvers", "assignee")

# Every key a stored or imported definition may hold; any other is a typo to report.
FIELD_KEYS = ("name", "label", "type", "required", "default", "options")
ACTION_KEYS = ("name", "to", "require_fields")
NOTIFICATION_KEYS = ("recipients", "addresses", "address_fields", "subject", "body", "attach_files")
STAGE_KEYS = (
    "key",
    "name",
    "kind",
    "actions",
    "assignee_kind",
    "assignee",
    "approver_source",
    "approvers",
    "approver_field",
    "approval_mode",
    "approve_to",
    "reject_to",
    "reason_required",
    "resolution",
    "edit_fields",
    "notifications",
    "sla_goal_hours",
    "sla_deadline_hours",
)

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def slugify(text: str) -> str:
    """Lowercase letters, digits and _ from `text` ("Send back" -> "send_back")."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40]


@dataclass(frozen=True)
class Problem:
    """One thing to change, with where it is (`stages[2].approvers`)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class DefinitionError(ValueError):
    """The definition cannot be used; `problems` says what to change."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class FieldDef:
    name: str
    label: str
    type: str = "text"
    required: bool = False
    default: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Notification:
    recipients: tuple[str, ...] = ()  # requester / approvers / assignee
    addresses: tuple[str, ...] = ()
    address_fields: tuple[str, ...] = ()
    subject: str = ""
    body: str = ""
    attach_files: bool = False


@dataclass(frozen=True)
class ActionDef:
    name: str
    to: str = ""  # stage key; empty means the next stage in order
    require_fields: bool = True

    @property
    def slug(self) -> str:
        return slugify(self.name)


@dataclass(frozen=True)
class StageDef:
    key: str
    name: str
    kind: str
    # work
    actions: tuple[ActionDef, ...] = ()
    assignee_kind: str = "none"
    assignee: str = ""  # a user's email, a role, or the name of a work group
    # approval
    approver_source: str = "addresses"
    approvers: tuple[str, ...] = ()  # addresses, or the emails of users
    approver_field: str = ""
    approval_mode: str = "any"
    approve_to: str = ""  # empty: the next stage
    reject_to: str = ""  # empty: the first rejected resolution
    reason_required: bool = True
    # resolution
    resolution: str = "completed"
    # every kind
    edit_fields: bool = False
    notifications: tuple[Notification, ...] = ()
    sla_goal_hours: float | None = None
    sla_deadline_hours: float | None = None

    @property
    def is_resolution(self) -> bool:
        return self.kind == RESOLUTION


@dataclass(frozen=True)
class Definition:
    fields: tuple[FieldDef, ...] = ()
    stages: tuple[StageDef, ...] = ()
    problems: tuple[Problem, ...] = field(default=(), compare=False)

    def stage(self, key: str) -> StageDef:
        """The stage with this key; raises KeyError."""
        for stage in self.stages:
            if stage.key == key:
                return stage
        raise KeyError(key)

    def field_named(self, name: str) -> FieldDef | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def first_stage(self) -> StageDef:
        return self.stages[0]

    def next_stage_key(self, key: str) -> str:
        """The key of the stage after `key` in order, or "" for the last one."""
        keys = [s.key for s in self.stages]
        index = keys.index(key)
        return keys[index + 1] if index + 1 < len(keys) else ""

    def action_target(self, stage: StageDef, action: ActionDef) -> str:
        return action.to or self.next_stage_key(stage.key)

    def approve_target(self, stage: StageDef) -> str:
        return stage.approve_to or self.next_stage_key(stage.key)

    def reject_target(self, stage: StageDef) -> str:
        if stage.reject_to:
            return stage.reject_to
        rejected = [s for s in self.stages if s.is_resolution and s.resolution == "rejected"]
        return rejected[0].key if rejected else ""

    def edges(self) -> list[tuple[str, str, str]]:
        """Every designed transition as (from key, action label, to key)."""
        result = []
        for stage in self.stages:
            if stage.kind == WORK:
                for action in stage.actions:
                    result.append((stage.key, action.name, self.action_target(stage, action)))
            elif stage.kind == APPROVAL:
                result.append((stage.key, "Approve", self.approve_target(stage)))
                result.append((stage.key, "Reject", self.reject_target(stage)))
        return result

    def to_dict(self) -> dict[str, Any]:
        """The stored form, as `parse_definition` reads it."""
        return {
            "fields": [_field_dict(f) for f in self.fields],
            "stages": [_stage_dict(s) for s in self.stages],
        }


def _field_dict(f: FieldDef) -> dict[str, Any]:
    data: dict[str, Any] = {"name": f.name, "label": f.label, "type": f.type}
    data["required"] = f.required
    data["default"] = f.default
    if f.type == "choice":
        data["options"] = list(f.options)
    return data


def _stage_dict(s: StageDef) -> dict[str, Any]:
    data: dict[str, Any] = {"key": s.key, "name": s.name, "kind": s.kind}
    if s.kind == WORK:
        data["actions"] = [
            {"name": a.name, "to": a.to, "require_fields": a.require_fields} for a in s.actions
        ]
        data["assignee_kind"] = s.assignee_kind
        data["assignee"] = s.assignee
    elif s.kind == APPROVAL:
        data.update(
            approver_source=s.approver_source,
            approvers=list(s.approvers),
            approver_field=s.approver_field,
            approval_mode=s.approval_mode,
            approve_to=s.approve_to,
            reject_to=s.reject_to,
            reason_required=s.reason_required,
        )
    else:
        data["resolution"] = s.resolution
    data["edit_fields"] = s.edit_fields
    data["notifications"] = [
        {
            "recipients": list(n.recipients),
            "addresses": list(n.addresses),
            "address_fields": list(n.address_fields),
            "subject": n.subject,
            "body": n.body,
            "attach_files": n.attach_files,
        }
        for n in s.notifications
    ]
    data["sla_goal_hours"] = s.sla_goal_hours
    data["sla_deadline_hours"] = s.sla_deadline_hours
    return data


class _Reader:
    """Reads loosely typed data (forms, JSON, YAML) and collects problems with their paths."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def mapping(self, value: Any, path: str, keys: Sequence[str] = ()) -> Mapping[str, Any]:
        """`value` as a mapping; with `keys`, any other key is reported."""
        if not isinstance(value, Mapping):
            self.fail(path, "must be a mapping of names to values.")
            return {}
        for key in value:
            if keys and key not in keys:
                self.fail(f"{path}.{key}", f"unknown key; use {', '.join(keys)}.")
        return value

    def items(self, data: Mapping[str, Any], key: str, path: str) -> list[Any]:
        value = data.get(key, [])
        if value is None:
            return []
        if isinstance(value, list | tuple):
            return list(value)
        self.fail(f"{path}.{key}".lstrip("."), "must be a list.")
        return []

    def text(self, data: Mapping[str, Any], key: str, path: str, default: str = "") -> str:
        value = data.get(key, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.fail(f"{path}.{key}", "must be text.")
            return default
        return str(value).strip()

    def flag(self, data: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        value = data.get(key, default)
        if isinstance(value, bool):
            return value
        self.fail(f"{path}.{key}", "must be true or false.")
        return default

    def hours(self, data: Mapping[str, Any], key: str, path: str) -> float | None:
        value = data.get(key)
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            self.fail(f"{path}.{key}", "must be a number of hours.")
            return None
        try:
            hours = float(value)
        except ValueError:
            self.fail(f"{path}.{key}", "must be a number of hours.")
            return None
        if not 0 < hours <= 24 * 365:
            self.fail(f"{path}.{key}", "must be more than 0 and at most a year (8760 hours).")
            return None
        return hours

    def strings(self, data: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
        value = data.get(key, [])
        if value is None:
            return ()
        if isinstance(value, str):
            value = [part for part in re.split(r"[,\n]", value)]
        if not isinstance(value, list | tuple):
            self.fail(f"{path}.{key}", "must be a list.")
            return ()
        result = []
        for item in value:
            if not isinstance(item, str):
                self.fail(f"{path}.{key}", "must be a list of text values.")
                return ()
            if item.strip():
                result.append(item.strip())
        return tuple(result)

    def choice(
        self, data: Mapping[str, Any], key: str, path: str, allowed: Sequence[str], default: str
    ) -> str:
        value = self.text(data, key, path, default) or default
        if value not in allowed:
            self.fail(f"{path}.{key}", f"must be one of {', '.join(allowed)} (not {value!r}).")
            return default
        return value


def parse_definition(data: Any, *, check: bool = True) -> Definition:
    """Read a stored or imported definition; raises DefinitionError listing what to change.

    With `check=False` only the shape is enforced and the design problems (an unreachable
    stage, a missing resolution...) are returned in `Definition.problems`, so that a draft
    can be saved and shown while it is still being built.
    """
    reader = _Reader()
    root = reader.mapping(data, "definition")
    fields = tuple(
        _read_field(reader, item, f"fields[{i}]")
        for i, item in enumerate(reader.items(root, "fields", ""))
    )
    stages = tuple(
        _read_stage(reader, item, f"stages[{i}]")
        for i, item in enumerate(reader.items(root, "stages", ""))
    )
    if reader.problems:
        raise DefinitionError(reader.problems)
    definition = Definition(fields=fields, stages=stages)
    problems = design_problems(definition)
    if problems and check:
        raise DefinitionError(problems)
    return Definition(fields=fields, stages=stages, problems=tuple(problems))


def _read_field(reader: _Reader, item: Any, path: str) -> FieldDef:
    data = reader.mapping(item, path, FIELD_KEYS)
    name = reader.text(data, "name", path)
    label = reader.text(data, "label", path) or name.replace("_", " ").capitalize()
    kind = reader.choice(data, "type", path, FIELD_TYPES, "text")
    options = reader.strings(data, "options", path)
    default = reader.text(data, "default", path)
    return FieldDef(
        name=name,
        label=label[:100],
        type=kind,
        required=reader.flag(data, "required", path, False),
        default=default,
        options=options if kind == "choice" else (),
    )


def _read_notification(reader: _Reader, item: Any, path: str) -> Notification:
    data = reader.mapping(item, path, NOTIFICATION_KEYS)
    recipients = reader.strings(data, "recipients", path)
    for recipient in recipients:
        if recipient not in RECIPIENT_KINDS:
            reader.fail(
                f"{path}.recipients",
                f"{recipient!r} is not a recipient; use {', '.join(RECIPIENT_KINDS)}.",
            )
    return Notification(
        recipients=recipients,
        addresses=reader.strings(data, "addresses", path),
        address_fields=reader.strings(data, "address_fields", path),
        subject=reader.text(data, "subject", path),
        body=str(data.get("body") or "").strip(),
        attach_files=reader.flag(data, "attach_files", path, False),
    )


def _read_stage(reader: _Reader, item: Any, path: str) -> StageDef:
    data = reader.mapping(item, path, STAGE_KEYS)
    name = reader.text(data, "name", path)
    key = reader.text(data, "key", path) or slugify(name)
    kind = reader.choice(data, "kind", path, STAGE_KINDS, WORK)
    actions = []
    for i, action in enumerate(reader.items(data, "actions", path)):
        action_path = f"{path}.actions[{i}]"
        action_data = reader.mapping(action, action_path, ACTION_KEYS)
        actions.append(
            ActionDef(
                name=reader.text(action_data, "name", action_path),
                to=reader.text(action_data, "to", action_path),
                require_fields=reader.flag(action_data, "require_fields", action_path, True),
            )
        )
    notifications = tuple(
        _read_notification(reader, n, f"{path}.notifications[{i}]")
        for i, n in enumerate(reader.items(data, "notifications", path))
    )
    return StageDef(
        key=key,
        name=name,
        kind=kind,
        actions=tuple(actions) if kind == WORK else (),
        assignee_kind=reader.choice(data, "assignee_kind", path, ASSIGNEE_KINDS, "none"),
        assignee=reader.text(data, "assignee", path),
        approver_source=reader.choice(data, "approver_source", path, APPROVER_SOURCES, "addresses"),
        approvers=tuple(a.lower() for a in reader.strings(data, "approvers", path)),
        approver_field=reader.text(data, "approver_field", path),
        approval_mode=reader.choice(data, "approval_mode", path, APPROVAL_MODES, "any"),
        approve_to=reader.text(data, "approve_to", path),
        reject_to=reader.text(data, "reject_to", path),
        reason_required=reader.flag(data, "reason_required", path, True),
        resolution=reader.choice(data, "resolution", path, RESOLUTIONS, "completed"),
        edit_fields=reader.flag(data, "edit_fields", path, False),
        notifications=notifications,
        sla_goal_hours=reader.hours(data, "sla_goal_hours", path),
        sla_deadline_hours=reader.hours(data, "sla_deadline_hours", path),
    )


def design_problems(definition: Definition) -> list[Problem]:
    """What keeps a definition from being published, each with what to change."""
    problems: list[Problem] = []
    add = problems.append
    field_names: set[str] = set()
    for i, f in enumerate(definition.fields):
        path = f"fields[{i}]"
        if not NAME_RE.match(f.name):
            add(
                Problem(
                    path,
                    f"The field name {f.name!r} must start with a letter and use only "
                    "lowercase letters, digits and _ (at most 40).",
                )
            )
        if f.name in field_names:
            add(Problem(path, f"Two fields are named {f.name!r}; give each field its own name."))
        if f.name in BUILTIN_NAMES:
            add(Problem(path, f"{f.name!r} is a built-in name; choose another field name."))
        field_names.add(f.name)
        if f.type == "choice" and not f.options:
            add(Problem(path, f"The choice field {f.label!r} needs at least one option."))
        if f.default:
            error = field_value_error(f, f.default)
            if error:
                add(Problem(path, f"The default of {f.label!r}: {error}"))

    stages = definition.stages
    if not stages:
        add(Problem("stages", "Add at least one stage, and a resolution stage to end in."))
        return problems
    keys = [s.key for s in stages]
    seen_names: set[str] = set()
    seen_keys: set[str] = set()
    for i, stage in enumerate(stages):
        path = f"stages[{i}]"
        if not stage.name:
            add(Problem(path, "Give the stage a name."))
        if stage.name.lower() in seen_names:
            add(Problem(path, f"Two stages are named {stage.name!r}; rename one of them."))
        seen_names.add(stage.name.lower())
        if not NAME_RE.match(stage.key) or stage.key in seen_keys:
            add(
                Problem(
                    path,
                    f"The stage key {stage.key!r} must be unique, lowercase letters, digits and _.",
                )
            )
        seen_keys.add(stage.key)
        problems.extend(_stage_problems(definition, stage, path, keys, field_names))

    if stages[0].is_resolution:
        add(
            Problem("stages[0]", "The first stage is where cases start; it cannot be a resolution.")
        )
    if not any(s.is_resolution for s in stages):
        add(Problem("stages", "Add a resolution stage so that cases can end."))

    reachable = _reachable(definition, stages[0].key)
    for i, stage in enumerate(stages):
        if stage.key not in reachable:
            add(
                Problem(
                    f"stages[{i}]",
                    f"No action leads to the stage {stage.name!r}; connect it "
                    "from an earlier stage or remove it.",
                )
            )
    ends = {s.key for s in stages if s.is_resolution}
    for i, stage in enumerate(stages):
        if (
            not stage.is_resolution
            and stage.key in reachable
            and not (_reachable(definition, stage.key) & ends)
        ):
            add(
                Problem(
                    f"stages[{i}]",
                    f"Cases in {stage.name!r} can never be resolved; add an "
                    "action that leads towards a resolution stage.",
                )
            )
    return problems


def _stage_problems(
    definition: Definition, stage: StageDef, path: str, keys: list[str], field_names: set[str]
) -> list[Problem]:
    problems: list[Problem] = []
    add = problems.append

    def check_target(target: str, where: str, what: str) -> None:
        if not target:
            add(Problem(where, f"{what} has no stage to go to: it is the last stage; pick one."))
        elif target not in keys:
            add(
                Problem(
                    where, f"{what} goes to an unknown stage {target!r}; pick one of the stages."
                )
            )

    if stage.kind == WORK:
        if not stage.actions:
            add(
                Problem(
                    path,
                    f"The work stage {stage.name!r} needs at least one action (for "
                    'example "Submit") to leave it.',
                )
            )
        slugs: set[str] = set()
        for j, action in enumerate(stage.actions):
            where = f"{path}.actions[{j}]"
            if not action.slug:
                add(Problem(where, "Give the action a name with letters or digits."))
            elif action.slug in slugs or action.slug in ("approve", "reject"):
                add(
                    Problem(
                        where,
                        f"The action name {action.name!r} is used twice in "
                        f"{stage.name!r} (or is reserved for approvals); rename it.",
                    )
                )
            slugs.add(action.slug)
            check_target(
                definition.action_target(stage, action), where, f"The action {action.name!r}"
            )
        if stage.assignee_kind == "user" and not EMAIL_RE.match(stage.assignee):
            add(Problem(f"{path}.assignee", "Give the email address of the assigned user."))
        if stage.assignee_kind == "role" and stage.assignee not in QUEUE_ROLES:
            add(Problem(f"{path}.assignee", f"Pick a work queue: {', '.join(QUEUE_ROLES)}."))
        if stage.assignee_kind == "group" and not 0 < len(stage.assignee) <= 60:
            add(Problem(f"{path}.assignee", "Pick the work group that gets the cases."))
    elif stage.kind == APPROVAL:
        if stage.approver_source == "field":
            f = definition.field_named(stage.approver_field)
            if f is None:
                add(
                    Problem(
                        f"{path}.approver_field",
                        f"The approval stage {stage.name!r} takes "
                        "its approvers from a field; pick an existing email field.",
                    )
                )
            elif f.type != "email":
                add(
                    Problem(
                        f"{path}.approver_field",
                        f"The field {f.label!r} is not an email "
                        "field; approvers must come from an email field.",
                    )
                )
        elif not stage.approvers:
            add(
                Problem(
                    f"{path}.approvers",
                    f"The approval stage {stage.name!r} has no approvers; add at least one.",
                )
            )
        for approver in stage.approvers:
            if stage.approver_source != "field" and not EMAIL_RE.match(approver):
                add(Problem(f"{path}.approvers", f"{approver!r} is not an email address."))
        check_target(definition.approve_target(stage), f"{path}.approve_to", "Approve")
        reject = definition.reject_target(stage)
        if not reject:
            add(
                Problem(
                    f"{path}.reject_to",
                    "Reject needs a stage to go to: add a Resolved-Rejected stage or pick one.",
                )
            )
        else:
            check_target(reject, f"{path}.reject_to", "Reject")
    if (
        stage.sla_goal_hours
        and stage.sla_deadline_hours
        and (stage.sla_goal_hours > stage.sla_deadline_hours)
    ):
        add(Problem(path, f"The SLA goal of {stage.name!r} is later than its deadline."))
    if stage.is_resolution and stage.edit_fields:
        add(Problem(path, "Fields cannot be edited once a case is resolved."))

    known = set(field_names) | set(BUILTIN_NAMES)
    for j, note in enumerate(stage.notifications):
        where = f"{path}.notifications[{j}]"
        for name in placeholders(note.subject) + placeholders(note.body):
            if name not in known:
                add(
                    Problem(
                        where,
                        f"The template uses {{{{ {name} }}}}, which is not a field; "
                        f"use one of: {', '.join(sorted(known))}.",
                    )
                )
        for text in (note.subject, note.body):
            broken = broken_placeholder_problem(text)
            if broken:
                add(Problem(where, f"In the template, {broken}."))
        for name in note.address_fields:
            f = definition.field_named(name)
            if f is None or f.type != "email":
                add(Problem(where, f"Recipients from field {name!r}: pick an email field."))
        for address in note.addresses:
            if not EMAIL_RE.match(address):
                add(Problem(where, f"{address!r} is not an email address."))
        if not (note.recipients or note.addresses or note.address_fields):
            add(Problem(where, "The notification has no recipients."))
        if not note.subject:
            add(Problem(where, "The notification needs a subject."))
        if "approvers" in note.recipients and stage.kind != APPROVAL:
            add(Problem(where, "Only approval stages have approvers to notify."))
        if "assignee" in note.recipients and not (
            stage.kind == WORK and stage.assignee_kind != "none"
        ):
            add(Problem(where, "This stage has no assignee to notify."))
    return problems


def _reachable(definition: Definition, start: str) -> set[str]:
    seen = {start}
    todo = [start]
    edges = definition.edges()
    while todo:
        key = todo.pop()
        for source, _label, target in edges:
            if source == key and target and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def field_value_error(f: FieldDef, value: str) -> str:
    """Why `value` does not fit the field, as a sentence, or "" when it fits."""
    if value == "":
        return f"{f.label} is required." if f.required else ""
    if f.type == "number":
        try:
            Decimal(value)
        except InvalidOperation:
            return "Enter a number, for example 42 or 3.5."
        if not Decimal(value).is_finite():
            return "Enter a number, for example 42 or 3.5."
    elif f.type == "money":
        if not re.fullmatch(r"-?\d{1,15}(\.\d{1,2})?", value):
            return "Enter an amount such as 120 or 120.50 (no currency sign)."
    elif f.type == "date":
        try:
            date.fromisoformat(value)
        except ValueError:
            return "Enter a date as YYYY-MM-DD."
    elif f.type == "email":
        if not EMAIL_RE.match(value) or len(value) > 320:
            return "Enter an email address such as name@example.com."
    elif f.type == "choice":
        if value not in f.options:
            return f"Pick one of: {', '.join(f.options)}."
    elif f.type == "text" and len(value) > 500:
        return "Keep it under 500 characters (use a long text field for more)."
    elif f.type == "long_text" and len(value) > 20000:
        return "Keep it under 20,000 characters."
    return ""


def check_values(
    definition: Definition, values: Mapping[str, str], *, require: bool
) -> tuple[dict[str, str], dict[str, str]]:
    """Clean field values: (values by field name, error by field name).

    Unknown names are ignored; with `require`, empty required fields are errors.
    """
    cleaned: dict[str, str] = {}
    errors: dict[str, str] = {}
    for f in definition.fields:
        value = str(values.get(f.name, "") or "").strip()
        if f.type == "email":
            value = value.lower()
        if value == "" and not require:
            cleaned[f.name] = ""
            continue
        error = field_value_error(f, value)
        if error:
            errors[f.name] = error
        else:
            cleaned[f.name] = value
    return cleaned, errors
