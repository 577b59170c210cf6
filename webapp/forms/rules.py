"""Service email rule forms: the rule itself and the rule tester's upload."""

from __future__ import annotations

from flask_wtf.file import FileField, FileRequired
from wtforms import (
    BooleanField,
    SelectChoice,
    SelectField,
    StringField,
    SubmitField,
    TextAreaField,
)
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange

from webapp.forms.base import BaseForm, IntegerField
from webapp.models import CaseType, EmailChannel, ServiceEmailRule

ACTIONS = [
    SelectChoice("create_case", "Open a case (replies join their case)"),
    SelectChoice("update_case", "Only update the case a message belongs to"),
]
POLICIES = [
    SelectChoice("new_case", "Open a new case"),
    SelectChoice("reopen", "Reopen the case and add the message"),
    SelectChoice("reply_closed", "Answer that the case is closed"),
]


class RuleForm(BaseForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=100)])
    action = SelectField("What a message does", choices=ACTIONS)
    case_type_id = SelectField(
        "Case type",
        choices=[],
        description="Cases are opened on its newest published version.",
    )
    mappings = TextAreaField(
        "Field mappings",
        validators=[Length(max=20_000)],
        render_kw={"rows": 6, "spellcheck": "false", "class": "font-monospace"},
        description="One per line: field, source, value, such as: amount body_key Amount "
        "(the sources are explained below the form).",
    )
    stage_action = StringField(
        "Stage action",
        validators=[Length(max=100)],
        description="Optional: the action (such as submit) to run when a message opens or "
        "joins a case.",
    )
    resolved_policy = SelectField("Mail for a resolved case", choices=POLICIES)
    send_ack = BooleanField("Send an acknowledgement to the sender (never to automatic mail)")
    ack_subject = StringField(
        "Acknowledgement subject",
        validators=[Length(max=300)],
        description="Placeholders: {{ case_id }}, {{ subject }}, {{ requester }} and field names.",
    )
    ack_body = TextAreaField(
        "Acknowledgement text", validators=[Length(max=20_000)], render_kw={"rows": 4}
    )
    max_attachments = IntegerField(
        "Attachments kept per message",
        default=20,
        validators=[InputRequired("Enter a number."), NumberRange(0, 200)],
    )
    max_attachment_bytes = IntegerField(
        "Largest attachment kept (bytes)",
        default=10 * 1024 * 1024,
        validators=[InputRequired("Enter a size in bytes."), NumberRange(1, 50 * 1024 * 1024)],
    )
    submit = SubmitField("Save rule")

    def set_case_types(self, case_types: list[CaseType]) -> None:
        self.case_type_id.choices = [SelectChoice("", "None (for rules that only update)")] + [
            SelectChoice(str(t.id), f"{t.name} ({t.prefix})") for t in case_types
        ]


class RuleTestForm(BaseForm):
    rule_id = SelectField("Rule", choices=[], default="")
    channel_id = SelectField(
        "Or an email channel",
        choices=[],
        default="",
        description="When picked, the channel routes the message (the rule above is not used).",
    )
    message = FileField(
        "Message (.eml)",
        validators=[FileRequired("Choose an .eml file to test.")],
        description="Nothing is saved: the page shows what the rule would do with it.",
    )
    submit = SubmitField("Test")

    def set_rules(
        self, rules: list[ServiceEmailRule], channels: list[EmailChannel] | None = None
    ) -> None:
        self.rule_id.choices = [SelectChoice("", "—")] + [
            SelectChoice(str(r.id), r.name) for r in rules
        ]
        self.channel_id.choices = [SelectChoice("", "—")] + [
            SelectChoice(str(c.id), c.name) for c in channels or []
        ]
