"""Work-queue group forms."""

from __future__ import annotations

from wtforms import SelectChoice, SelectMultipleField, StringField, SubmitField
from wtforms.validators import DataRequired, Length

from webapp.forms.base import BaseForm
from webapp.models import User
from webapp.services.groups import MAX_NAME


class GroupForm(BaseForm):
    name = StringField(
        "Name",
        validators=[DataRequired(), Length(max=MAX_NAME)],
        description="Stages route cases to the group by this name, for example Finance.",
    )
    members = SelectMultipleField(
        "Members",
        choices=[],
        description="Workers and admins; members see the group's cases under My work.",
    )
    submit = SubmitField("Save group")

    def set_people(self, users: list[User]) -> None:
        self.members.choices = [
            SelectChoice(u.email, f"{u.display_name} ({u.email})" if u.name else u.email)
            for u in users
        ]
