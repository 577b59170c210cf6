"""Email channels: saving with validation, route order, and routing a parsed message."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from webapp.extensions import db
from webapp.mail import routing
from webapp.mail.parse import ParsedMessage
from webapp.models import CaseType, ChannelRoute, EmailChannel, EmailListener, ServiceEmailRule
from webapp.services.text import still_used

MAX_NAME = 100
MAX_ROUTES = 100
_OP_WORDS = {"contains": "contains", "equals": "equals", "regex": "regex", "matches": "regex"}


class ChannelError(ValueError):
    """A channel or route was refused; `field_errors` say which form field, each a sentence."""

    def __init__(self, message: str, field_errors: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.field_errors = dict(field_errors or {})


@dataclass(frozen=True)
class Target:
    """Where a route (or the default) leads; case_type or rule is set for those kinds."""

    kind: str
    rule: ServiceEmailRule | None = None
    case_type: CaseType | None = None


def all_channels() -> list[EmailChannel]:
    return list(db.session.scalars(select(EmailChannel).order_by(EmailChannel.name)))


def parse_condition(line: str) -> dict[str, str]:
    """One condition from "FIELD OP VALUE" (FIELD may be header:NAME); raises ChannelError."""
    parts = line.strip().split(None, 2)
    if len(parts) < 3:
        raise ChannelError(
            "Write what to look at, how, and the text, for example “subject contains invoice”.",
            {"conditions": "A condition needs a field, a comparison and a text."},
        )
    field, op, value = parts
    condition = {"field": field.lower(), "op": _OP_WORDS.get(op.lower(), op), "value": value}
    if field.lower().startswith("header:"):
        condition["field"] = "header"
        condition["header"] = field.split(":", 1)[1]
    try:
        routing.compile_condition(condition)
    except routing.RoutingError as exc:
        raise ChannelError(str(exc), {"conditions": str(exc)}) from None
    return condition


def parse_condition_lines(text: str) -> list[dict[str, str]]:
    """Conditions from lines "FIELD OP VALUE" (FIELD may be header:NAME); raises ChannelError."""
    conditions: list[dict[str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(line.strip().split(None, 2)) < 3:
            raise ChannelError(
                f"Line {number}: write what to look at, how, and the text, for example "
                "“subject contains invoice”.",
                {"conditions": f"Line {number} needs a field, a comparison and a text."},
            )
        try:
            conditions.append(parse_condition(line))
        except ChannelError as exc:
            raise ChannelError(
                f"Line {number}: {exc}", {"conditions": f"Line {number}: {exc}"}
            ) from None
    if not conditions:
        raise ChannelError(
            "A route needs at least one condition.",
            {"conditions": "Enter at least one condition, one per line."},
        )
    return conditions


def condition_line(condition: Mapping[str, Any]) -> str:
    """The line parse_condition_lines reads back into `condition`."""
    field = condition.get("field", "")
    if field == "header":
        field = f"header:{condition.get('header', '')}"
    return f"{field} {condition.get('op', '')} {condition.get('value', '')}"


def _target(kind: str, target_id: int | None, field: str) -> Target:
    if kind not in routing.TARGET_KINDS:
        raise ChannelError(
            "Choose where it leads.", {field: "Choose a case type, a rule, ignore or quarantine."}
        )
    if kind == routing.RULE:
        rule = db.session.get(ServiceEmailRule, target_id) if target_id else None
        if rule is None:
            raise ChannelError("Choose a rule.", {f"{field}_rule": "Choose a rule from the list."})
        return Target(kind, rule=rule)
    if kind == routing.CASE_TYPE:
        case_type = db.session.get(CaseType, target_id) if target_id else None
        if case_type is None or not case_type.versions:
            raise ChannelError(
                "Choose a case type.",
                {f"{field}_case_type": "Choose a case type with a published version."},
            )
        return Target(kind, case_type=case_type)
    return Target(kind)


def save_channel(
    channel: EmailChannel | None,
    *,
    name: str,
    mode: str,
    default_kind: str,
    default_id: int | None = None,
) -> EmailChannel:
    """Create (channel None) or update a channel; raises ChannelError, changing nothing."""
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise ChannelError(
            "Enter a name.", {"name": f"Enter a name of at most {MAX_NAME} characters."}
        )
    same = db.session.scalar(select(EmailChannel).where(EmailChannel.name == name))
    if same is not None and same is not channel:
        raise ChannelError(
            "That name is taken.", {"name": f"A channel named {name} already exists."}
        )
    if mode not in routing.MODES:
        raise ChannelError("Choose a mode.", {"mode": "Choose first match or all matches."})
    target = _target(default_kind, default_id, "default")
    if channel is None:
        channel = EmailChannel()
        db.session.add(channel)
    channel.name = name
    channel.mode = mode
    channel.default_kind = target.kind
    channel.default_rule = target.rule
    channel.default_case_type = target.case_type
    db.session.flush()
    return channel


def delete_channel(channel: EmailChannel) -> None:
    """Delete a channel no listener uses; raises ChannelError."""
    names = list(
        db.session.scalars(select(EmailListener.name).where(EmailListener.channel_id == channel.id))
    )
    if names:
        raise ChannelError(
            still_used(
                "listener",
                names,
                ("routes", "route"),
                "through this channel",
                "change {them} first",
            )
        )
    db.session.delete(channel)
    db.session.flush()


def _check_conditions(conditions: list[dict[str, str]]) -> None:
    if not conditions:
        raise ChannelError(
            "A route needs at least one condition.",
            {"conditions": "Enter at least one condition, one per line."},
        )
    if len(conditions) > routing.MAX_CONDITIONS:
        raise ChannelError(
            f"A route has at most {routing.MAX_CONDITIONS} conditions.",
            {"conditions": f"Keep to {routing.MAX_CONDITIONS} conditions or fewer."},
        )
    for condition in conditions:
        try:
            routing.compile_condition(condition)
        except routing.RoutingError as exc:
            raise ChannelError(str(exc), {"conditions": str(exc)}) from None


def add_route(
    channel: EmailChannel, conditions: list[dict[str, str]], kind: str, target_id: int | None
) -> ChannelRoute:
    """Add a route after the others; raises ChannelError for a bad condition or target."""
    if len(channel.routes) >= MAX_ROUTES:
        raise ChannelError(f"A channel has at most {MAX_ROUTES} routes.")
    _check_conditions(conditions)
    target = _target(kind, target_id, "target")
    route = ChannelRoute(
        position=len(channel.routes) + 1,
        conditions=conditions,
        target_kind=target.kind,
        rule=target.rule,
        case_type=target.case_type,
    )
    channel.routes.append(route)
    db.session.flush()
    return route


def update_route(
    route: ChannelRoute, conditions: list[dict[str, str]], kind: str, target_id: int | None
) -> bool:
    """Change a route's conditions and target, keeping its place; returns whether anything
    changed. Raises ChannelError, as add_route does, changing nothing."""
    _check_conditions(conditions)
    target = _target(kind, target_id, "target")
    before = (route.conditions, route.target_kind, route.rule_id, route.case_type_id)
    after = (
        conditions,
        target.kind,
        target.rule.id if target.rule else None,
        target.case_type.id if target.case_type else None,
    )
    if before == after:
        return False
    route.conditions = conditions
    route.target_kind = target.kind
    route.rule = target.rule
    route.case_type = target.case_type
    db.session.flush()
    return True


def remove_route(route: ChannelRoute) -> None:
    """Remove a route; the ones after it move up."""
    channel = route.channel
    channel.routes.remove(route)
    _renumber(channel)


def move_route(route: ChannelRoute, offset: int) -> None:
    """Move a route up (-1) or down (+1); at the top or bottom it stays."""
    channel = route.channel
    ordered = sorted(channel.routes, key=lambda r: r.position)
    index = ordered.index(route)
    other = index + offset
    if 0 <= other < len(ordered):
        ordered[index], ordered[other] = ordered[other], ordered[index]
    for position, item in enumerate(ordered, start=1):
        item.position = position
    db.session.flush()


def _renumber(channel: EmailChannel) -> None:
    for position, item in enumerate(sorted(channel.routes, key=lambda r: r.position), start=1):
        item.position = position
    db.session.flush()


def _label(rule: ServiceEmailRule | None, case_type: CaseType | None) -> str:
    if rule is not None:
        return rule.name
    return case_type.name if case_type is not None else ""


def compiled(channel: EmailChannel) -> tuple[list[routing.Route], routing.Route]:
    """The channel's routes and default route, checked; raises ChannelError for a stored bad one."""
    routes: list[routing.Route] = []
    try:
        for row in channel.routes:
            routes.append(
                routing.compile_route(
                    row.position,
                    row.conditions or [],
                    row.target_kind,
                    row.rule_id or row.case_type_id,
                    _label(row.rule, row.case_type),
                )
            )
        default = routing.default_route(
            channel.default_kind,
            channel.default_rule_id or channel.default_case_type_id,
            _label(channel.default_rule, channel.default_case_type),
        )
    except routing.RoutingError as exc:
        raise ChannelError(
            f"The channel {channel.name} has a route that is not valid: {exc}"
        ) from None
    return routes, default


def route(channel: EmailChannel, message: ParsedMessage) -> routing.RoutingResult:
    """The routes of `channel` that `message` takes; raises ChannelError for a bad stored route."""
    routes, default = compiled(channel)
    return routing.route_message(message, routes, channel.mode, default)
