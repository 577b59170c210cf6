"""Service email rules: what an incoming message does, validated on save, applied when ingested."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from webapp.casetypes.definition import (
    APPROVAL,
    WORK,
    Definition,
    FieldDef,
    field_value_error,
    slugify,
)
from webapp.casetypes.engine import APPROVE, REJECT
from webapp.casetypes.templating import broken_placeholder_problem, placeholders
from webapp.extensions import db
from webapp.mail.outbound import HeaderValueError, header_text
from webapp.mail.parse import ParsedMessage
from webapp.mail.routing import PatternTimeout, compile_pattern, first_match
from webapp.models import (
    CaseType,
    ChannelRoute,
    EmailChannel,
    EmailListener,
    ResolvedCasePolicy,
    RuleAction,
    ServiceEmailRule,
)
from webapp.services.casetypes import version_definition
from webapp.services.text import still_used

SOURCES = {
    "header": "header value",
    "subject_regex": "subject regular expression",
    "body_regex": "body regular expression",
    "body_key": "Key: Value line in the body",
}
MAX_NAME = 100
MAX_MAPPINGS = 50
MAX_PATTERN = 500
MAX_ATTACHMENT_LIMIT = 50 * 1024 * 1024
MAX_ACK_SUBJECT = 300
# The placeholders services/ingest.py fills an acknowledgement with, besides the case type's
# fields.
ACK_NAMES = ("case_id", "subject", "requester")
_HEADER_NAME_RE = re.compile(r"^[!-9;-~]{1,76}$")  # RFC 5322 field name: printable, no colon
_KEY_RE = re.compile(r"^[^:\r\n]{1,100}$")


class RuleError(ValueError):
    """A rule was refused; the message is fit to show, `field_errors` say which field."""

    def __init__(self, message: str, field_errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.field_errors = field_errors or {}


@dataclass
class RuleData:
    """What the rule form sends."""

    name: str
    action: str
    case_type_id: int | None
    mappings: list[dict[str, str]] = field(default_factory=list)
    stage_action: str = ""
    resolved_policy: str = ResolvedCasePolicy.NEW_CASE.value
    send_ack: bool = False
    ack_subject: str = ""
    ack_body: str = ""
    max_attachment_bytes: int = 10 * 1024 * 1024
    max_attachments: int = 20


@dataclass(frozen=True)
class MappedValue:
    """One mapping applied to a message: what was found, and the value or why it does not fit."""

    field: str
    label: str
    source: str
    found: str | None  # None: the source did not occur in the message
    value: str
    error: str


def all_rules() -> list[ServiceEmailRule]:
    return list(db.session.scalars(select(ServiceEmailRule).order_by(ServiceEmailRule.name)))


def published_case_types() -> list[CaseType]:
    """Case types a rule may open cases of (those with a published version)."""
    return [t for t in db.session.scalars(select(CaseType).order_by(CaseType.name)) if t.versions]


def definition_for(case_type: CaseType | None) -> Definition | None:
    """The newest published definition of `case_type`, or None."""
    if case_type is None or case_type.latest_version is None:
        return None
    return version_definition(case_type.latest_version)


def field_of(definition: Definition, name: str) -> FieldDef | None:
    return next((f for f in definition.fields if f.name == name), None)


def parse_mapping_lines(text: str) -> list[dict[str, str]]:
    """Mappings from lines `field source value`; raises RuleError naming the line."""
    mappings: list[dict[str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 3:
            raise RuleError(
                f"Line {number}: write the field, the source and its value, "
                "for example: amount body_key Amount",
                {"mappings": f"Line {number} is incomplete."},
            )
        mappings.append({"field": parts[0], "source": parts[1], "value": parts[2]})
    return mappings


def mapping_lines(mappings: list[dict[str, Any]]) -> str:
    """The text form of `mappings`, as `parse_mapping_lines` reads it."""
    return "\n".join(f"{m['field']} {m['source']} {m['value']}" for m in mappings)


def check_mapping(mapping: dict[str, str], definition: Definition) -> str:
    """Why `mapping` cannot work with `definition`, as a sentence, or ""."""
    name, source, value = mapping["field"], mapping["source"], mapping["value"]
    if field_of(definition, name) is None:
        known = ", ".join(f.name for f in definition.fields) or "none"
        return f"{name} is not a field of the case type (fields: {known})."
    if source not in SOURCES:
        return f"{source} is not a source; use one of: {', '.join(SOURCES)}."
    if source == "header" and not _HEADER_NAME_RE.match(value):
        return f"{value!r} is not a header name such as From or X-Department."
    if source == "body_key" and not _KEY_RE.match(value):
        return f"{value!r} cannot be a key: keep it on one line, without a colon."
    if source in ("subject_regex", "body_regex"):
        if len(value) > MAX_PATTERN:
            return f"Keep the expression for {name} under {MAX_PATTERN} characters."
        try:
            pattern = compile_pattern(value, multiline=True)
        except re.error as exc:
            return f"The expression for {name} does not compile: {exc}."
        if name not in pattern.groupindex:
            return f"The expression for {name} needs a named group (?P<{name}>...)."
    return ""


def save_rule(rule: ServiceEmailRule | None, data: RuleData) -> ServiceEmailRule:
    """Create (rule None) or update a rule after checking it; raises RuleError."""
    errors: dict[str, str] = {}
    name = " ".join(data.name.split())
    if not name:
        errors["name"] = "Give the rule a name."
    elif len(name) > MAX_NAME:
        errors["name"] = f"Keep the name under {MAX_NAME} characters."
    else:
        clash = db.session.scalar(
            select(ServiceEmailRule).where(func.lower(ServiceEmailRule.name) == name.lower())
        )
        if clash is not None and clash is not rule:
            errors["name"] = f"There is already a rule called {clash.name}."
    if data.action not in {a.value for a in RuleAction}:
        errors["action"] = "Pick what the rule does."
    if data.resolved_policy not in {p.value for p in ResolvedCasePolicy}:
        errors["resolved_policy"] = "Pick what mail for a resolved case does."
    case_type = db.session.get(CaseType, data.case_type_id) if data.case_type_id else None
    definition = definition_for(case_type)
    if data.action == RuleAction.CREATE_CASE.value and definition is None:
        errors["case_type_id"] = (
            "Pick a case type with a published version: the rule opens cases of it."
        )
    if data.mappings and definition is None:
        errors["mappings"] = "Field mappings need a case type with a published version."
    elif definition is not None:
        if len(data.mappings) > MAX_MAPPINGS:
            errors["mappings"] = f"A rule takes up to {MAX_MAPPINGS} mappings."
        for number, mapping in enumerate(data.mappings, start=1):
            problem = check_mapping(mapping, definition)
            if problem:
                errors["mappings"] = f"Line {number}: {problem}"
                break
    if data.action == RuleAction.UPDATE_CASE.value:
        # What only a new case uses would be kept and never do anything. A rule saved so
        # before keeps it until it is changed (it can be renamed, exported and imported).
        if data.mappings and (rule is None or data.mappings != (rule.field_mappings or [])):
            errors["mappings"] = (
                "A rule that only updates cases maps no fields: fields are set when a case is "
                "opened. Remove the mappings, or let the rule open cases."
            )
        if data.send_ack and (rule is None or not rule.send_ack):
            errors["send_ack"] = (
                "An acknowledgement goes out when a case is opened, which a rule that only "
                "updates cases never does. Turn it off, or let the rule open cases."
            )
    # Stored as the key the engine fires ("Send back" -> send_back), checked when it can be.
    stage_action = slugify(data.stage_action.strip()) if data.stage_action.strip() else ""
    if len(data.stage_action.strip()) > 100:
        errors["stage_action"] = "Keep the action name under 100 characters."
    elif stage_action and definition is not None and case_type is not None:
        actions = _stage_actions(definition)
        if stage_action not in actions:
            errors["stage_action"] = (
                f"No stage of {case_type.name} has the action “{data.stage_action.strip()}”: "
                f"use one of {', '.join(sorted(actions))}."
            )
    # Line breaks in the subject are folded to spaces; other control characters are refused,
    # as building the acknowledgement would refuse them for every case.
    ack_subject = " ".join(data.ack_subject.split())
    if data.send_ack and not ack_subject:
        errors["ack_subject"] = "Give the acknowledgement a subject, or turn it off."
    elif len(data.ack_subject) > MAX_ACK_SUBJECT:
        errors["ack_subject"] = f"Keep the subject under {MAX_ACK_SUBJECT} characters."
    else:
        try:
            header_text("The subject", ack_subject)
        except HeaderValueError as exc:
            errors["ack_subject"] = f"{exc} Remove them (pasted text can carry them)."
    for key, text in (("ack_subject", ack_subject), ("ack_body", data.ack_body)):
        problem = _placeholder_problem(text, definition)
        if problem and key not in errors:
            errors[key] = problem
    if not 1 <= data.max_attachment_bytes <= MAX_ATTACHMENT_LIMIT:
        errors["max_attachment_bytes"] = (
            f"Enter a size from 1 to {MAX_ATTACHMENT_LIMIT} bytes (50 MB)."
        )
    if not 0 <= data.max_attachments <= 200:
        errors["max_attachments"] = "Enter a number from 0 to 200."
    if errors:
        raise RuleError("The rule was not saved: " + " ".join(errors.values()), errors)
    if rule is None:
        rule = ServiceEmailRule(name=name)
        db.session.add(rule)
    rule.name = name
    rule.action = data.action
    rule.case_type_id = case_type.id if case_type else None
    rule.field_mappings = [dict(m) for m in data.mappings]
    rule.stage_action = stage_action
    rule.resolved_policy = data.resolved_policy
    rule.send_ack = data.send_ack
    rule.ack_subject = ack_subject
    rule.ack_body = data.ack_body
    rule.max_attachment_bytes = data.max_attachment_bytes
    rule.max_attachments = data.max_attachments
    db.session.flush()
    return rule


def _stage_actions(definition: Definition) -> set[str]:
    """The actions a rule can run on cases of `definition`, by the key the engine fires."""
    actions = {a.slug for stage in definition.stages if stage.kind == WORK for a in stage.actions}
    if any(stage.kind == APPROVAL for stage in definition.stages):
        actions |= {APPROVE, REJECT}
    return actions


def _placeholder_problem(template: str, definition: Definition | None) -> str:
    """Why `template` cannot fill an acknowledgement, as a sentence, or ""."""
    known = [*ACK_NAMES, *(f.name for f in definition.fields)] if definition else [*ACK_NAMES]
    listed = ", ".join(f"{{{{ {name} }}}}" for name in known)
    if definition is None:  # no case type yet: only how the placeholders are written is checked
        listed += " or a field of the case type"
    problems = []
    unknown = [n for n in dict.fromkeys(placeholders(template)) if n not in known]
    if unknown and definition is not None:
        problems.append("Unknown placeholder " + ", ".join(f"{{{{ {n} }}}}" for n in unknown))
    broken = broken_placeholder_problem(template)
    if broken:
        problems.append(broken)
    return f"{'; '.join(problems)}: use one of: {listed}." if problems else ""


def delete_rule(rule: ServiceEmailRule) -> None:
    """Delete a rule no listener uses; raises RuleError."""
    users = db.session.scalars(select(EmailListener.name).where(EmailListener.rule_id == rule.id))
    names = list(users)
    if names:
        raise RuleError(
            still_used("listener", names, ("uses", "use"), "this rule", "change {them} first")
        )
    channels = channels_using(rule.id).get(rule.id, [])
    if channels:
        raise RuleError(
            still_used(
                "email channel",
                channels,
                ("routes", "route"),
                "to this rule",
                "change {them} first",
            )
        )
    db.session.delete(rule)
    db.session.flush()


def channels_using(rule_id: int | None = None) -> dict[int, list[str]]:
    """By rule id, the names of the email channels with a route, or the default route, to it
    (to `rule_id` only, when given), in one query."""
    by_route = select(ChannelRoute.rule_id, EmailChannel.name).join(EmailChannel)
    by_default = select(EmailChannel.default_rule_id, EmailChannel.name)
    if rule_id is not None:
        by_route = by_route.where(ChannelRoute.rule_id == rule_id)
        by_default = by_default.where(EmailChannel.default_rule_id == rule_id)
    found: dict[int, set[str]] = {}
    for used, name in db.session.execute(by_route.union(by_default)):
        if used is not None:
            found.setdefault(used, set()).add(name)
    return {used: sorted(names) for used, names in found.items()}


def stale_mappings(rule: ServiceEmailRule) -> list[str]:
    """The fields the rule maps that its case type's newest published version no longer has
    (the designer removed them and published): their values are not kept."""
    definition = definition_for(rule.case_type)
    if definition is None:
        return []
    mapped = dict.fromkeys(m["field"] for m in rule.field_mappings or [])
    return [name for name in mapped if field_of(definition, name) is None]


def map_fields(rule: ServiceEmailRule, message: ParsedMessage) -> list[MappedValue]:
    """Apply the rule's mappings to `message`: each value found, converted, or its error."""
    definition = definition_for(rule.case_type)
    if definition is None:
        return []
    results: list[MappedValue] = []
    timed_out = False
    for mapping in rule.field_mappings or []:
        target = field_of(definition, mapping["field"])
        if target is None:
            continue  # a field the case type no longer has: see stale_mappings
        if timed_out and mapping["source"] in ("subject_regex", "body_regex"):
            # The message is quarantined already: one stopped expression a message is enough.
            continue
        try:
            found = _extract(mapping["source"], mapping["value"], mapping["field"], message)
        except PatternTimeout as exc:
            # An error, not an empty field: the sender's text would decide, unseen, which
            # fields stay empty.
            where = "subject" if mapping["source"] == "subject_regex" else "body"
            error = (
                f"{target.label}: the {where} expression for {target.name} {exc}. Simplify "
                f"it in the rule {rule.name}, then replay the message."
            )
            found, value, timed_out = None, "", True
        else:
            value, error = ("", "") if found is None else convert(target, found)
        results.append(
            MappedValue(target.name, target.label, _describe(mapping), found, value, error)
        )
    return results


def convert(target: FieldDef, found: str) -> tuple[str, str]:
    """`found` converted to the field's type: (value, "") or ("", a sentence why not)."""
    value = " ".join(found.split()) if target.type != "long_text" else found.strip()
    if target.type == "email":
        value = value.strip("<>").lower()
    elif target.type in ("number", "money"):
        # Mail writes amounts with currency signs and thousands separators: 1,200.50 EUR.
        value = re.sub(r"[^\d.\-]", "", value.replace(",", "")) or value
    elif target.type == "choice":
        by_fold = {o.casefold(): o for o in target.options}
        value = by_fold.get(value.casefold(), value)
    problem = field_value_error(target, value)
    if problem and value:
        return "", f"{target.label}: {found.strip()[:80]!r} does not fit. {problem}"
    return value, ""


def _extract(source: str, spec: str, name: str, message: ParsedMessage) -> str | None:
    if source == "header":
        return message.header(spec)
    if source in ("subject_regex", "body_regex"):
        text = message.subject if source == "subject_regex" else message.text
        try:
            pattern = compile_pattern(spec, multiline=True)
        except re.error:
            return None
        match = first_match(pattern, [text])
        return match.group(name) if match and match.group(name) is not None else None
    if source == "body_key":
        line = re.search(rf"^[ \t>]*{re.escape(spec)}[ \t]*:[ \t]*(.*)$", message.text, re.M | re.I)
        return line.group(1).strip() if line else None
    return None


def _describe(mapping: dict[str, Any]) -> str:
    source, value = mapping["source"], mapping["value"]
    if source == "header":
        return f"header {value}"
    if source == "body_key":
        return f"body line {value}: …"
    where = "subject" if source == "subject_regex" else "body"
    return f"{where} matching {value}"
