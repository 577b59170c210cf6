"""Forms for cases: the fields of a case type (built from its definition), actions, comments,
email."""

from __future__ import annotations

from typing import Any

from flask_wtf.file import FileField, FileRequired
from wtforms import (
    EmailField,
    Field,
    HiddenField,
    SelectChoice,
    SelectField,
    SelectMultipleField,
    StringField,
    SubmitField,
    TextAreaField,
)
from wtforms.validators import DataRequired, InputRequired, Length, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from webapp.casetypes.definition import Definition, FieldDef
from webapp.forms.base import BaseForm, IntegerField


def _field_for(f: FieldDef) -> Any:
    description = "Required." if f.required else ""
    if f.type == "long_text":
        return TextAreaField(f.label, description=description, render_kw={"rows": 4})
    if f.type == "email":
        return EmailField(f.label, description=description)
    if f.type == "date":
        return StringField(f.label, description=description, render_kw={"type": "date"})
    if f.type in ("number", "money"):
        hint = "An amount such as 120.50." if f.type == "money" else "A number."
        return StringField(
            f.label,
            description=f"{description} {hint}".strip(),
            render_kw={"inputmode": "decimal"},
        )
    if f.type == "choice":
        choices = [SelectChoice("", "— choose —")] + [SelectChoice(o, o) for o in f.options]
        return SelectField(f.label, choices=choices, description=description)
    return StringField(f.label, description=description)


class CaseFieldsForm(BaseForm):
    """Base of the per-case-type form; `field_names` lists the case type's fields in order."""

    field_names: list[str] = []  # noqa: RUF012 - replaced per subclass

    def values(self) -> dict[str, str]:
        return {name: self[name].data or "" for name in self.field_names}

    def show_errors(self, errors: dict[str, str]) -> None:
        """Put the service's messages beside the fields they concern."""
        for name, message in errors.items():
            if name in self:
                field: Field = self[name]
                field.errors = [*field.errors, message]


def case_form_class(definition: Definition, *, new_case: bool) -> type[CaseFieldsForm]:
    """A form class with one input per field of the case type (and subject/requester when new)."""
    attributes: dict[str, Any] = {}
    if new_case:
        attributes["subject"] = StringField(
            "Subject",
            validators=[DataRequired(), Length(max=300)],
            description="A short title shown in the queue.",
        )
        attributes["requester"] = EmailField(
            "Requester's email",
            validators=[Optional(), Length(max=320)],
            description="Who asked for this; leave empty for yourself.",
        )
    for f in definition.fields:
        attributes[f.name] = _field_for(f)
    attributes["row_version"] = HiddenField()
    attributes["submit"] = SubmitField("Create case" if new_case else "Save fields")
    attributes["field_names"] = [f.name for f in definition.fields]
    return type("CaseFields", (CaseFieldsForm,), attributes)


class CaseActionForm(BaseForm):
    comment = TextAreaField("Comment", validators=[Optional(), Length(max=5000)])
    row_version = IntegerField(validators=[InputRequired()])


class CommentForm(BaseForm):
    comment = TextAreaField("Comment", validators=[DataRequired(), Length(max=5000)])
    submit = SubmitField("Add comment")


class AttachmentForm(BaseForm):
    file = FileField("File", validators=[FileRequired("Choose a file to attach.")])
    submit = SubmitField("Attach")


class EmailForm(BaseForm):
    """Compose an email on the case page; the service checks addresses and placeholders."""

    to = StringField(
        "To",
        validators=[Length(max=5000)],
        description="One or more addresses, separated by commas.",
    )
    cc = StringField("Cc", validators=[Length(max=5000)], description="Optional.")
    subject = StringField("Subject", validators=[Length(max=300)])
    body = TextAreaField("Message", validators=[Length(max=100_000)], render_kw={"rows": 10})
    attachments = SelectMultipleField(
        "Attach files of the case",
        coerce=int,
        validate_choice=False,
        widget=ListWidget(prefix_label=False),
        option_widget=CheckboxInput(),
    )
    submit = SubmitField("Send email")
