"""Email channel routing: ordered routes whose conditions pick what a message does.

Pure: conditions are checked against a ParsedMessage, nothing is read or written elsewhere.
A condition is a dict {"field", "op", "value"} (plus "header" when field is "header"); every
condition of a route must hold for the route to match. What matched is kept as a sentence.

Admins write the regular expressions; senders write the text they are searched in. Some
expressions take exponential time on some text (`^(a|a)+$` against forty a's and a "!"), and
the standard library's `re` cannot be stopped once it has started. So every admin-written
expression (channel conditions here, rule mappings in services/rules.py) is searched with the
`regex` package, which stops after PATTERN_TIMEOUT, over text cut to MAX_SEARCHED_CHARS.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import regex

from webapp.mail.parse import ParsedMessage

FIELDS = {
    "sender": "the sender address",
    "sender_domain": "the sender domain",
    "recipients": "a recipient",
    "subject": "the subject",
    "body": "the body",
    "header": "the header",
}
OPS = {"contains": "contains", "equals": "equals", "regex": "matches"}
FIRST_MATCH = "first"
ALL_MATCHES = "all"
MODES = (FIRST_MATCH, ALL_MATCHES)
IGNORE = "ignore"
QUARANTINE = "quarantine"
CASE_TYPE = "case_type"
RULE = "rule"
TARGET_KINDS = (CASE_TYPE, RULE, IGNORE, QUARANTINE)
MAX_VALUE = 500
MAX_CONDITIONS = 20
# Text is searched only this far: even a quick expression over megabytes would stall ingest.
MAX_SEARCHED_CHARS = 200_000
# Seconds one expression may take over the text of one message (all of its candidates). Sane
# expressions take a few milliseconds over MAX_SEARCHED_CHARS; a message costs at most this
# much per expression of its rule or channel, however its sender wrote it.
PATTERN_TIMEOUT = 0.2
_HEADER_NAME = re.compile(r"^[!-9;-~]{1,100}$")
# Spellings that `regex` reads as POSIX classes or error counts and `re` as plain characters.
_AMBIGUOUS = re.compile(r"(?<!\\)\[:[a-z]+:\]|(?<!\\)\{\s*(?:\d+\s*<=?\s*)?[eisd]\s*[<=>}]")


class RoutingError(ValueError):
    """A condition or route is not valid; the message says which and why."""


class PatternTimeout(Exception):
    """An expression took longer than PATTERN_TIMEOUT on a message's text and was stopped."""


@functools.lru_cache(maxsize=512)  # rule mappings compile theirs for each message
def compile_pattern(
    value: str, *, ignore_case: bool = False, multiline: bool = False
) -> regex.Pattern[str]:
    """`value` compiled for `first_match`; raises re.error when `re` refuses it.

    The syntax is `re`'s, as it always was: `regex` alone would accept more (`\\p{L}`), and its
    VERSION0 reads what both accept as `re` does, but for two spellings that mean something
    else to `re`: error counts such as `{e<=1}` (plain text to `re`) and classes such as
    `[[:digit:]]` (a set of those letters to `re`). Those are refused, so that an expression
    means what its author tested it for.
    """
    if _AMBIGUOUS.search(value):
        raise re.error(
            "it uses [:…:] or {e<=…}, which regular expression engines read differently; "
            "write the characters out instead, such as [0-9] for [[:digit:]]"
        )
    re.compile(value, (re.IGNORECASE if ignore_case else 0) | (re.MULTILINE if multiline else 0))
    flags = regex.VERSION0
    if ignore_case:
        flags |= regex.IGNORECASE
    if multiline:
        flags |= regex.MULTILINE
    try:
        return regex.compile(value, flags)
    except regex.error as exc:
        raise re.error(str(exc)) from None


def first_match(pattern: regex.Pattern[str], texts: Iterable[str]) -> regex.Match[str] | None:
    """The first match of `pattern` in `texts`, each cut to MAX_SEARCHED_CHARS, or None.

    Raises PatternTimeout when searching them all takes longer than PATTERN_TIMEOUT.
    """
    stopped = f"took longer than {PATTERN_TIMEOUT:g} seconds on this message and was stopped"
    deadline = time.monotonic() + PATTERN_TIMEOUT
    for text in texts:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PatternTimeout(stopped)
        try:
            match = pattern.search(text[:MAX_SEARCHED_CHARS], timeout=left)
        except TimeoutError:
            raise PatternTimeout(stopped) from None
        if match is not None:
            return match
    return None


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: str
    header: str = ""
    pattern: regex.Pattern[str] | None = None

    def looks_at(self) -> str:
        return f"the header {self.header}" if self.field == "header" else FIELDS[self.field]

    def describe(self) -> str:
        return f"{self.looks_at()} {OPS[self.op]} “{self.value}”"

    def as_dict(self) -> dict[str, str]:
        data = {"field": self.field, "op": self.op, "value": self.value}
        if self.field == "header":
            data["header"] = self.header
        return data


@dataclass(frozen=True)
class Route:
    position: int
    conditions: tuple[Condition, ...]
    target_kind: str
    target_id: int | None = None
    target_label: str = ""

    def describe_target(self) -> str:
        if self.target_kind == IGNORE:
            return "ignore the message"
        if self.target_kind == QUARANTINE:
            return "quarantine the message"
        noun = "case type" if self.target_kind == CASE_TYPE else "rule"
        return f"the {noun} {self.target_label or f'#{self.target_id}'}"


@dataclass(frozen=True)
class Match:
    route: Route  # the default route has position 0 and no conditions
    sentence: str


@dataclass(frozen=True)
class RoutingResult:
    matches: tuple[Match, ...]
    used_default: bool

    @property
    def first(self) -> Match | None:
        return self.matches[0] if self.matches else None


def compile_condition(data: Mapping[str, Any]) -> Condition:
    """A checked Condition from its stored form; raises RoutingError naming the problem."""
    field = data.get("field")
    op = data.get("op")
    value = data.get("value")
    if field not in FIELDS:
        raise RoutingError(
            "Choose what a condition looks at: sender, sender domain, recipients, subject, "
            "body or a header."
        )
    if op not in OPS:
        raise RoutingError("Choose how a condition compares: contains, equals or regex.")
    if not isinstance(value, str) or not value.strip():
        raise RoutingError("Enter the text a condition looks for.")
    if len(value) > MAX_VALUE:
        raise RoutingError(f"A condition's text has at most {MAX_VALUE} characters.")
    header = ""
    if field == "header":
        header = str(data.get("header") or "").strip()
        if not _HEADER_NAME.match(header):
            raise RoutingError("Enter the header name to look at, for example X-Priority.")
    pattern = None
    if op == "regex":
        try:
            pattern = compile_pattern(value, ignore_case=True)
        except re.error as exc:
            raise RoutingError(f"The regular expression “{value}” is not valid: {exc}.") from None
    return Condition(str(field), str(op), value, header, pattern)


def compile_route(
    position: int,
    conditions: Sequence[Mapping[str, Any]],
    target_kind: str,
    target_id: int | None = None,
    target_label: str = "",
) -> Route:
    """A checked Route; raises RoutingError for a bad condition, target or count."""
    if target_kind not in TARGET_KINDS:
        raise RoutingError(
            "Choose where the route leads: a case type, a rule, ignore or quarantine."
        )
    if target_kind in (CASE_TYPE, RULE) and target_id is None:
        noun = "case type" if target_kind == CASE_TYPE else "rule"
        raise RoutingError(f"Choose the {noun} the route leads to.")
    if not conditions:
        raise RoutingError("A route needs at least one condition (the default route has none).")
    if len(conditions) > MAX_CONDITIONS:
        raise RoutingError(f"A route has at most {MAX_CONDITIONS} conditions.")
    compiled = tuple(compile_condition(c) for c in conditions)
    return Route(position, compiled, target_kind, target_id, target_label)


def _candidates(condition: Condition, message: ParsedMessage) -> list[str]:
    sender = message.sender or ""
    if condition.field == "sender":
        return [sender]
    if condition.field == "sender_domain":
        return [sender.rpartition("@")[2]] if "@" in sender else []
    if condition.field == "recipients":
        return list(message.recipients)
    if condition.field == "subject":
        return [message.subject]
    if condition.field == "body":
        return [message.text[:MAX_SEARCHED_CHARS]]
    return list(message.header_values(condition.header))


def holds(condition: Condition, message: ParsedMessage) -> bool:
    """Whether the condition holds for the message (text compared without case).

    Raises PatternTimeout when its expression took too long on the message.
    """
    if condition.pattern is not None:
        return first_match(condition.pattern, _candidates(condition, message)) is not None
    wanted = condition.value.strip().lower()
    for candidate in _candidates(condition, message):
        if condition.op == "equals":
            if candidate.strip().lower() == wanted:
                return True
        elif wanted in candidate.lower():
            return True
    return False


def default_route(target_kind: str, target_id: int | None = None, label: str = "") -> Route:
    """The route taken when none matches; raises RoutingError for a bad target."""
    if target_kind not in TARGET_KINDS:
        raise RoutingError("Choose a default route: a case type, a rule, ignore or quarantine.")
    if target_kind in (CASE_TYPE, RULE) and target_id is None:
        noun = "case type" if target_kind == CASE_TYPE else "rule"
        raise RoutingError(f"Choose the {noun} of the default route.")
    return Route(0, (), target_kind, target_id, label)


def route_message(
    message: ParsedMessage, routes: Sequence[Route], mode: str, default: Route | None
) -> RoutingResult:
    """The routes the message matches, in order (only the first in first-match mode).

    The default route is used when nothing matches; with no default the result is empty.
    When an expression takes too long on the message, routing stops there and the result is
    to quarantine the message, saying which condition: a condition that could not be checked
    neither holds nor fails (either way a sender could steer the message with its text), and
    the admin can simplify the expression and replay the message.
    """
    matches: list[Match] = []
    for route in sorted(routes, key=lambda r: r.position):
        matched = True
        for condition in route.conditions:
            try:
                matched = holds(condition, message)
            except PatternTimeout as exc:
                return _unchecked(route, condition, exc)
            if not matched:
                break
        if matched:
            said = " and ".join(c.describe() for c in route.conditions)
            matches.append(
                Match(route, f"Route {route.position} matched ({said}): {route.describe_target()}.")
            )
            if mode == FIRST_MATCH:
                break
    if matches or default is None:
        return RoutingResult(tuple(matches), False)
    sentence = f"No route matched: the default route, {default.describe_target()}."
    return RoutingResult((Match(default, sentence),), True)


def _unchecked(route: Route, condition: Condition, timeout: PatternTimeout) -> RoutingResult:
    sentence = (
        f"Route {route.position} could not be checked: the expression “{condition.value}” on "
        f"{condition.looks_at()} {timeout}. Simplify the expression, then replay the message."
    )
    return RoutingResult((Match(Route(route.position, (), QUARANTINE), sentence),), False)
