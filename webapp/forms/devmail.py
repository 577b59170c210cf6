"""The development mail sandbox's reply form."""

from __future__ import annotations

from wtforms import EmailField, StringField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, Email, Length

from webapp.forms.base import BaseForm


def _single_line(form: BaseForm, field: StringField) -> None:
    from wtforms.validators import ValidationError

    if any(ch in (field.data or "") for ch in "\r\n\0"):
        raise ValidationError("Must be a single line.")


class ReplyForm(BaseForm):
    from_address = EmailField("From", validators=[DataRequired(), Email(), Length(max=320)])
    to_address = EmailField("To", validators=[DataRequired(), Email(), Length(max=320)])
    subject = StringField("Subject", validators=[DataRequired(), Length(max=900), _single_line])
    body = TextAreaField("Message", validators=[Length(max=100_000)], render_kw={"rows": 10})
    submit = SubmitField("Send reply")


class ComposeForm(ReplyForm):
    submit = SubmitField("Send")
