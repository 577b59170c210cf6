"""Login, password and API token forms."""

from __future__ import annotations

from wtforms import BooleanField, EmailField, PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, EqualTo, Length

from webapp.forms.base import BaseForm
from webapp.services.users import MIN_PASSWORD_LENGTH, PASSWORD_LENGTH_MESSAGE


class LoginForm(BaseForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=320)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1000)])
    remember = BooleanField("Keep me signed in on this computer")
    submit = SubmitField("Sign in")


class ChangePasswordForm(BaseForm):
    current_password = PasswordField("Current password", validators=[DataRequired()])
    new_password = PasswordField(
        "New password",
        validators=[
            DataRequired(),
            Length(min=MIN_PASSWORD_LENGTH, max=1000, message=PASSWORD_LENGTH_MESSAGE),
        ],
        description=f"At least {MIN_PASSWORD_LENGTH} characters.",
    )
    confirm = PasswordField(
        "Repeat the new password",
        validators=[DataRequired(), EqualTo("new_password", message="The passwords differ.")],
    )
    submit = SubmitField("Change password")


class ApiTokenForm(BaseForm):
    name = StringField(
        "Token name",
        validators=[DataRequired(), Length(max=100)],
        description="What the token is for, e.g. 'reporting script'.",
    )
    submit = SubmitField("Create token")


class ConfirmForm(BaseForm):
    """An empty form for POST-only buttons (revoke, delete): it carries the CSRF token."""

    submit = SubmitField("Confirm")
