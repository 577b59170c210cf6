"""The form of the confirmation page."""

from __future__ import annotations

from wtforms import SubmitField, TextAreaField
from wtforms.validators import Length, Optional

from webapp.forms.base import BaseForm

MAX_COMMENT = 5000


class DecisionForm(BaseForm):
    """The approver's comment; the decision itself comes from the signed link."""

    comment = TextAreaField("Comment", validators=[Optional(), Length(max=MAX_COMMENT)])
    submit = SubmitField("Confirm")
