"""Case type designer forms."""

from __future__ import annotations

from typing import Any

from wtforms import (
    BooleanField,
    FieldList,
    Form,
    FormField,
    HiddenField,
    SelectChoice,
    SelectField,
    SelectMultipleField,
    StringField,
    SubmitField,
    TextAreaField,
)
from wtforms.validators import DataRequired, Length, NumberRange, Optional, Regexp

from webapp.casetypes.definition import FIELD_TYPE_LABELS, FIELD_TYPES
from webapp.casetypes.starters import STARTERS
from webapp.forms.base import BaseForm, DecimalField

PREFIX_HELP = "1 to 10 capital letters or digits; cases are numbered PREFIX-1001, PREFIX-1002…"


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").replace(",", "\n").splitlines() if line.strip()]


class CaseTypeForm(BaseForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=100)])
    prefix = StringField(
        "Id prefix",
        validators=[
            DataRequired(),
            Regexp(r"^[A-Za-z][A-Za-z0-9]{0,9}$", message=PREFIX_HELP),
        ],
        description=PREFIX_HELP,
    )
    description = TextAreaField("Description", validators=[Optional(), Length(max=2000)])
    starter = SelectField(
        "Start from",
        choices=[SelectChoice("", "A blank case type (one work stage and a resolution)")]
        + [SelectChoice(s.slug, f"The “{s.name}” template") for s in STARTERS.values()],
        default="",
    )
    submit = SubmitField("Save")


class FieldForm(BaseForm):
    name = StringField(
        "Field name",
        validators=[
            DataRequired(),
            Regexp(
                r"^[a-z][a-z0-9_]{0,39}$",
                message="Lowercase letters, digits and _, starting with a letter (e.g. "
                "manager_email).",
            ),
        ],
        description="Used in templates as {{ name }}; cannot be changed later.",
    )
    label = StringField("Label", validators=[DataRequired(), Length(max=100)])
    type = SelectField("Type", choices=[SelectChoice(t, FIELD_TYPE_LABELS[t]) for t in FIELD_TYPES])
    required = BooleanField("Required")
    default = StringField("Default value", validators=[Optional(), Length(max=500)])
    options = TextAreaField(
        "Options (choice fields)",
        validators=[Optional(), Length(max=5000)],
        description="One option per line.",
    )
    submit = SubmitField("Save field")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name.data,
            "label": self.label.data,
            "type": self.type.data,
            "required": bool(self.required.data),
            "default": self.default.data or "",
            "options": _lines(self.options.data) if self.type.data == "choice" else [],
        }


class AddStageForm(BaseForm):
    name = StringField("Stage name", validators=[DataRequired(), Length(max=60)])
    kind = SelectField(
        "Kind",
        choices=[
            SelectChoice("work", "Work"),
            SelectChoice("approval", "Approval"),
            SelectChoice("resolution", "Resolution (end)"),
        ],
    )
    submit = SubmitField("Add stage")


class ActionForm(Form):
    name = StringField("Action", filters=[_strip], validators=[Optional(), Length(max=60)])
    to = SelectField("Goes to", choices=[])
    require_fields = BooleanField("Needs required fields filled", default=True)


class NotificationForm(Form):
    recipients = SelectMultipleField(
        "Send to",
        description="Ctrl-click (⌘-click) to pick several.",
        choices=[
            SelectChoice("requester", "Requester"),
            SelectChoice("approvers", "Approvers"),
            SelectChoice("assignee", "Assignee"),
        ],
    )
    address_fields = SelectMultipleField(
        "Addresses from fields", choices=[], description="Email fields of the case."
    )
    addresses = TextAreaField(
        "Fixed addresses", filters=[_strip], description="One email address per line."
    )
    subject = StringField("Subject", filters=[_strip], validators=[Optional(), Length(max=300)])
    body = TextAreaField("Body", filters=[_strip], validators=[Optional(), Length(max=20000)])
    attach_files = BooleanField("Attach the case's files")
    remove = BooleanField("Remove this notification")


# The settings that only one stage kind has.
_KIND_SETTINGS = {
    "work": ("actions", "assignee_kind", "assignee_user", "assignee_queue", "assignee_group"),
    "approval": (
        "approver_source",
        "approvers",
        "approver_field",
        "approval_mode",
        "approve_to",
        "reject_to",
        "reason_required",
    ),
    "resolution": ("resolution",),
}


class StageForm(BaseForm):
    """Every setting of a stage; the page shows those that fit the stage's kind."""

    name = StringField("Stage name", validators=[DataRequired(), Length(max=60)])
    edit_fields = BooleanField("Case fields can be edited in this stage")
    sla_goal_hours = DecimalField(
        "SLA goal (hours)", validators=[Optional(), NumberRange(min=0.1, max=8760)], places=None
    )
    sla_deadline_hours = DecimalField(
        "SLA deadline (hours)",
        validators=[Optional(), NumberRange(min=0.1, max=8760)],
        places=None,
        description="Open cases past the deadline are flagged as overdue.",
    )
    # work
    actions = FieldList(FormField(ActionForm), min_entries=0)
    assignee_kind = SelectField(
        "Assign to",
        choices=[
            SelectChoice("none", "Nobody in particular (any worker)"),
            SelectChoice("user", "A user"),
            SelectChoice("role", "A work queue (role)"),
            SelectChoice("group", "A work queue (group)"),
        ],
    )
    assignee_user = StringField("User's email", validators=[Optional(), Length(max=320)])
    assignee_queue = SelectField(
        "Role's work queue",
        choices=[SelectChoice("worker", "Workers"), SelectChoice("admin", "Admins")],
    )
    # Any value is accepted here so that a group deleted since can be reported by the service
    # with a sentence, rather than as "Not a valid choice".
    assignee_group = SelectField(
        "Work group",
        choices=[],
        validate_choice=False,
        description="Admins manage groups under Admin → Groups.",
    )
    # approval
    approver_source = SelectField(
        "Approvers come from",
        choices=[
            SelectChoice("addresses", "Fixed email addresses"),
            SelectChoice("users", "Casemail users (by email)"),
            SelectChoice("field", "The address in a case field"),
        ],
    )
    approvers = TextAreaField(
        "Approver addresses",
        validators=[Optional()],
        description="For fixed addresses or users: one email address per line.",
    )
    approver_field = SelectField("Approver field", choices=[])
    approval_mode = SelectField(
        "Decision",
        choices=[
            SelectChoice("any", "Any one approver decides"),
            SelectChoice("all", "All approvers must approve"),
        ],
    )
    approve_to = SelectField("Approve goes to", choices=[])
    reject_to = SelectField("Reject goes to", choices=[])
    reason_required = BooleanField("A reason is required to reject")
    # resolution
    resolution = SelectField(
        "Outcome",
        choices=[
            SelectChoice("completed", "Completed"),
            SelectChoice("rejected", "Rejected"),
            SelectChoice("withdrawn", "Withdrawn"),
        ],
    )
    notifications = FieldList(FormField(NotificationForm), min_entries=0)
    submit = SubmitField("Save stage")

    def drop_unused(self, kind: str) -> None:
        """Remove the settings of the other stage kinds, so that they are neither shown nor
        validated."""
        unused = [
            name for other, names in _KIND_SETTINGS.items() if other != kind for name in names
        ]
        if kind == "resolution":
            unused.extend(("edit_fields", "sla_goal_hours", "sla_deadline_hours"))
        for name in unused:
            delattr(self, name)

    def set_choices(
        self,
        stages: list[tuple[str, str]],
        email_fields: list[tuple[str, str]],
        groups: list[str],
    ) -> None:
        """Fill the stage, field and group pickers from the draft and the groups."""
        targets = [SelectChoice("", "The next stage")] + [SelectChoice(k, n) for k, n in stages]
        if "actions" in self:
            for entry in self.actions:
                entry.form.to.choices = targets
            current = self.assignee_group.data or ""
            names = list(groups)
            if current and current not in names:
                names.append(current)
            self.assignee_group.choices = [
                SelectChoice("", "— pick a group —"),
                *(SelectChoice(n, n) for n in names),
            ]
        field_choices = [SelectChoice(k, n) for k, n in email_fields]
        if "approve_to" in self:
            self.approve_to.choices = targets
            self.reject_to.choices = [SelectChoice("", "The Resolved-Rejected stage")] + [
                SelectChoice(k, n) for k, n in stages
            ]
            self.approver_field.choices = [
                SelectChoice("", "— pick an email field —"),
                *field_choices,
            ]
        for entry in self.notifications:
            entry.form.address_fields.choices = field_choices

    def load(self, stage: dict[str, Any], blank_actions: int = 2) -> None:
        """Fill the form from a stored stage, with empty rows to add actions and a notification."""
        self.name.data = stage.get("name", "")
        self.edit_fields.data = stage.get("edit_fields", False)
        self.sla_goal_hours.data = stage.get("sla_goal_hours")
        self.sla_deadline_hours.data = stage.get("sla_deadline_hours")
        for action in [*stage.get("actions", []), *([{}] * blank_actions)]:
            self.actions.append_entry(
                {
                    "name": action.get("name", ""),
                    "to": action.get("to", ""),
                    "require_fields": action.get("require_fields", True),
                }
            )
        kind = stage.get("assignee_kind", "none")
        self.assignee_kind.data = kind
        self.assignee_user.data = stage.get("assignee", "") if kind == "user" else ""
        self.assignee_queue.data = stage.get("assignee", "worker") if kind == "role" else "worker"
        self.assignee_group.data = stage.get("assignee", "") if kind == "group" else ""
        self.approver_source.data = stage.get("approver_source", "addresses")
        self.approvers.data = "\n".join(stage.get("approvers", []))
        self.approver_field.data = stage.get("approver_field", "")
        self.approval_mode.data = stage.get("approval_mode", "any")
        self.approve_to.data = stage.get("approve_to", "")
        self.reject_to.data = stage.get("reject_to", "")
        self.reason_required.data = stage.get("reason_required", True)
        self.resolution.data = stage.get("resolution", "completed")
        for note in [*stage.get("notifications", []), {}]:
            self.notifications.append_entry(
                {
                    "recipients": note.get("recipients", []),
                    "address_fields": note.get("address_fields", []),
                    "addresses": "\n".join(note.get("addresses", [])),
                    "subject": note.get("subject", ""),
                    "body": note.get("body", ""),
                    "attach_files": note.get("attach_files", False),
                }
            )

    def to_dict(self, kind: str) -> dict[str, Any]:
        """The stage as the definition stores it (blank action and notification rows dropped)."""
        data: dict[str, Any] = {
            "name": self.name.data,
            "kind": kind,
        }
        if kind != "resolution":
            data["edit_fields"] = bool(self.edit_fields.data)
            data["sla_goal_hours"] = _hours(self.sla_goal_hours.data)
            data["sla_deadline_hours"] = _hours(self.sla_deadline_hours.data)
        if kind == "work":
            data["actions"] = [
                {
                    "name": entry.form.name.data,
                    "to": entry.form.to.data or "",
                    "require_fields": bool(entry.form.require_fields.data),
                }
                for entry in self.actions
                if entry.form.name.data
            ]
            assignee_kind = self.assignee_kind.data or "none"
            data["assignee_kind"] = assignee_kind
            data["assignee"] = {
                "user": (self.assignee_user.data or "").lower(),
                "role": self.assignee_queue.data,
                "group": self.assignee_group.data or "",
            }.get(assignee_kind, "")
        elif kind == "approval":
            data.update(
                approver_source=self.approver_source.data,
                approvers=_lines(self.approvers.data)
                if self.approver_source.data != "field"
                else [],
                approver_field=self.approver_field.data
                if self.approver_source.data == "field"
                else "",
                approval_mode=self.approval_mode.data,
                approve_to=self.approve_to.data or "",
                reject_to=self.reject_to.data or "",
                reason_required=bool(self.reason_required.data),
            )
        else:
            data["resolution"] = self.resolution.data
        notes = []
        for entry in self.notifications:
            note = entry.form
            if note.remove.data:
                continue
            empty = not (
                note.subject.data
                or note.body.data
                or note.recipients.data
                or note.addresses.data
                or note.address_fields.data
            )
            if empty:
                continue
            notes.append(
                {
                    "recipients": list(note.recipients.data or []),
                    "address_fields": list(note.address_fields.data or []),
                    "addresses": _lines(note.addresses.data),
                    "subject": note.subject.data or "",
                    "body": note.body.data or "",
                    "attach_files": bool(note.attach_files.data),
                }
            )
        data["notifications"] = notes
        return data


def _hours(value: Any) -> float | None:
    return float(value) if value is not None else None


class ConfirmActionForm(BaseForm):
    """A bare CSRF-protected form for buttons (publish, remove, move)."""

    value = HiddenField()
