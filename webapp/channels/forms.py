"""Channel forms: the channel (name, mode, default route) and a route to add."""

from __future__ import annotations

from collections.abc import Sequence

from wtforms import SelectChoice, SelectField, StringField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length

from webapp.forms.base import BaseForm, row_select
from webapp.models import CaseType, ServiceEmailRule

MODES = [
    SelectChoice("first", "First match"),
    SelectChoice("all", "All matches"),
]
KINDS = [
    SelectChoice("quarantine", "Quarantine (an admin looks at it)"),
    SelectChoice("ignore", "Ignore (kept, no case)"),
    SelectChoice("rule", "A service email rule"),
    SelectChoice("case_type", "A case type (a new case, no field mappings)"),
]


def _rule_choices(rules: Sequence[ServiceEmailRule]) -> list[SelectChoice]:
    return [SelectChoice(None, "—")] + [SelectChoice(r.id, r.name) for r in rules]


def _type_choices(types: Sequence[CaseType]) -> list[SelectChoice]:
    return [SelectChoice(None, "—")] + [SelectChoice(t.id, t.name) for t in types]


class ChannelForm(BaseForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=100)])
    mode = SelectField(
        "Mode",
        choices=MODES,
        description="First match: the first route that matches decides. All matches: every "
        "match is recorded; the first that opens cases decides.",
    )
    default = SelectField(
        "Default route",
        choices=KINDS,
        description="Where a message goes when no route matches.",
    )
    default_rule = row_select("Default rule", choose="a rule", description="For “A rule”.")
    default_case_type = row_select(
        "Default case type", choose="a case type", description="For “A case type”."
    )
    submit = SubmitField("Save channel")

    def set_choices(self, rules: Sequence[ServiceEmailRule], types: Sequence[CaseType]) -> None:
        self.default_rule.choices = _rule_choices(rules)
        self.default_case_type.choices = _type_choices(types)


class RouteForm(BaseForm):
    conditions = TextAreaField(
        "Conditions",
        validators=[DataRequired("Enter at least one condition, one per line.")],
        render_kw={"rows": 3},
        description="One per line, all must hold: what to look at, how, and the text.",
    )
    target = SelectField("Then", choices=KINDS)
    target_rule = row_select("Rule", choose="a rule", description="For “A rule”.")
    target_case_type = row_select(
        "Case type", choose="a case type", description="For “A case type”."
    )
    submit = SubmitField("Add route")

    def set_choices(self, rules: Sequence[ServiceEmailRule], types: Sequence[CaseType]) -> None:
        self.target_rule.choices = _rule_choices(rules)
        self.target_case_type.choices = _type_choices(types)
