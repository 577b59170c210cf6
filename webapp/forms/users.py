"""User administration forms."""

from __future__ import annotations

from wtforms import (
    BooleanField,
    EmailField,
    PasswordField,
    SelectChoice,
    SelectField,
    StringField,
    SubmitField,
)
from wtforms.validators import DataRequired, Email, Length, Optional

from webapp.forms.base import BaseForm
from webapp.models import Role
from webapp.services.users import MIN_PASSWORD_LENGTH, PASSWORD_LENGTH_MESSAGE

ROLE_CHOICES = [
    SelectChoice(Role.WORKER.value, "Worker — works cases and decides approvals"),
    SelectChoice(Role.DESIGNER.value, "Designer — designs case types"),
    SelectChoice(Role.ADMIN.value, "Admin — configures mail and manages users"),
]


class UserCreateForm(BaseForm):
    email = EmailField("Email", validators=[DataRequired(), Email(), Length(max=320)])
    name = StringField("Full name", validators=[Optional(), Length(max=200)])
    role = SelectField("Role", choices=ROLE_CHOICES, default=Role.WORKER.value)
    password = PasswordField(
        "Initial password",
        validators=[
            DataRequired(),
            Length(min=MIN_PASSWORD_LENGTH, max=1000, message=PASSWORD_LENGTH_MESSAGE),
        ],
        description=f"At least {MIN_PASSWORD_LENGTH} characters; tell it to the user safely.",
    )
    submit = SubmitField("Create user")


class UserEditForm(BaseForm):
    name = StringField("Full name", validators=[Optional(), Length(max=200)])
    role = SelectField("Role", choices=ROLE_CHOICES)
    active = BooleanField("Active (may sign in)")
    new_password = PasswordField(
        "Set a new password",
        validators=[
            Optional(),
            Length(min=MIN_PASSWORD_LENGTH, max=1000, message=PASSWORD_LENGTH_MESSAGE),
        ],
        description="Leave empty to keep the current password.",
    )
    submit = SubmitField("Save changes")
