"""Channel routing: conditions over a parsed message, the order of routes, the default."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support.inbound import message
from webapp.mail import routing
from webapp.mail.parse import ParsedMessage, parse_message


def parsed(**kwargs: str) -> ParsedMessage:
    return parse_message(message(**kwargs))


def cond(field: str, op: str, value: str, header: str = "") -> dict[str, str]:
    data = {"field": field, "op": op, "value": value}
    if header:
        data["header"] = header
    return data


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (cond("sender", "equals", "ALICE@example.com"), True),
        (cond("sender", "equals", "bob@example.com"), False),
        (cond("sender_domain", "equals", "example.com"), True),
        (cond("sender_domain", "equals", "ample.com"), False),
        (cond("sender_domain", "regex", r"\.com$"), True),
        (cond("recipients", "contains", "expenses@"), True),
        (cond("recipients", "equals", "expenses@casemail.test"), True),
        (cond("subject", "contains", "airport"), True),
        (cond("subject", "regex", r"^taxi\b"), True),
        (cond("subject", "equals", "taxi"), False),
        (cond("body", "contains", "amount: 42"), True),
        (cond("header", "equals", "1", header="X-Priority"), True),
        (cond("header", "contains", "1", header="X-Missing"), False),
    ],
)
def test_each_condition_compares_without_letter_case(condition, expected):
    msg = parsed(headers="X-Priority: 1\r\n")
    assert routing.holds(routing.compile_condition(condition), msg) is expected


@pytest.mark.parametrize(
    ("condition", "error"),
    [
        (cond("size", "equals", "1"), "Choose what a condition looks at"),
        (cond("subject", "like", "x"), "Choose how a condition compares"),
        (cond("subject", "contains", "  "), "Enter the text"),
        (cond("subject", "regex", "(unclosed"), "The regular expression “(unclosed” is not valid"),
        (cond("header", "equals", "1"), "Enter the header name"),
        (cond("header", "equals", "1", header="Bad:Name"), "Enter the header name"),
        (cond("subject", "contains", "x" * 501), "at most 500 characters"),
    ],
)
def test_bad_conditions_are_refused_with_a_sentence(condition, error):
    with pytest.raises(routing.RoutingError, match=error.replace("(", r"\(")):
        routing.compile_condition(condition)


def test_a_route_needs_conditions_and_a_target():
    with pytest.raises(routing.RoutingError, match="at least one condition"):
        routing.compile_route(1, [], routing.IGNORE)
    with pytest.raises(routing.RoutingError, match="Choose the rule"):
        routing.compile_route(1, [cond("subject", "contains", "x")], routing.RULE)
    with pytest.raises(routing.RoutingError, match="Choose where the route leads"):
        routing.compile_route(1, [cond("subject", "contains", "x")], "delete")


def _routes() -> list[routing.Route]:
    return [
        routing.compile_route(
            2, [cond("subject", "contains", "taxi")], routing.CASE_TYPE, 7, "Expense approval"
        ),
        routing.compile_route(
            1,
            [cond("sender_domain", "equals", "example.com"), cond("body", "contains", "amount")],
            routing.RULE,
            3,
            "Expenses by email",
        ),
        routing.compile_route(3, [cond("subject", "contains", "newsletter")], routing.IGNORE),
    ]


def test_first_match_takes_the_lowest_position_and_says_what_matched():
    result = routing.route_message(parsed(), _routes(), routing.FIRST_MATCH, None)
    assert [m.route.position for m in result.matches] == [1]
    assert result.matches[0].sentence == (
        "Route 1 matched (the sender domain equals “example.com” and the body contains "
        "“amount”): the rule Expenses by email."
    )
    assert not result.used_default


def test_all_matches_lists_every_matching_route_in_order():
    result = routing.route_message(parsed(), _routes(), routing.ALL_MATCHES, None)
    assert [m.route.position for m in result.matches] == [1, 2]
    assert result.matches[1].sentence.endswith("the case type Expense approval.")


def test_the_default_route_is_taken_when_nothing_matches():
    default = routing.default_route(routing.QUARANTINE)
    result = routing.route_message(
        parsed(subject="Hello", sender="bob@other.test", body="hi\n"),
        _routes(),
        routing.FIRST_MATCH,
        default,
    )
    assert result.used_default
    assert result.matches[0].route.target_kind == routing.QUARANTINE
    assert result.matches[0].sentence == (
        "No route matched: the default route, quarantine the message."
    )
    empty = routing.route_message(parsed(subject="Hello"), [], routing.FIRST_MATCH, None)
    assert empty.matches == ()


def test_a_malformed_sender_matches_no_sender_condition():
    msg = parse_message(b"From: not an address\r\nSubject: x\r\n\r\nbody\r\n")
    for condition in (cond("sender", "contains", "not"), cond("sender_domain", "regex", ".")):
        assert not routing.holds(routing.compile_condition(condition), msg)


@contextmanager
def finishes_within(seconds: float) -> Iterator[None]:
    """Fails the test, stopping the block, when the block is still running after `seconds`."""

    def stop(signum: int, frame: object) -> None:
        pytest.fail(f"Still running after {seconds} seconds.")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


SLOW = "^(a|a)+$"  # exponential on a run of a's that does not end the text


@pytest.mark.parametrize("mode", [routing.FIRST_MATCH, routing.ALL_MATCHES])
def test_an_expression_that_takes_too_long_stops_routing_and_quarantines_the_message(mode):
    routes = [
        routing.compile_route(1, [cond("subject", "contains", "invoice")], routing.IGNORE),
        routing.compile_route(2, [cond("subject", "regex", SLOW)], routing.RULE, 3, "Expenses"),
        routing.compile_route(3, [cond("subject", "contains", "a")], routing.RULE, 4, "Other"),
    ]
    default = routing.default_route(routing.RULE, 4, "Other")
    msg = parsed(subject="a" * 40 + "!")
    with finishes_within(2):
        result = routing.route_message(msg, routes, mode, default)
    assert not result.used_default
    assert [(m.route.position, m.route.target_kind) for m in result.matches] == [
        (2, routing.QUARANTINE)
    ]
    assert result.matches[0].sentence == (
        "Route 2 could not be checked: the expression “^(a|a)+$” on the subject took longer "
        "than 0.2 seconds on this message and was stopped. Simplify the expression, then "
        "replay the message."
    )


def test_nested_repeats_are_answered_at_once():
    nested = routing.compile_condition(cond("subject", "regex", "^(a+)+$"))
    with finishes_within(1):
        assert not routing.holds(nested, parsed(subject="a" * 40 + "!"))
        assert routing.holds(nested, parsed(subject="a" * 40))


def test_one_expression_has_one_time_bound_for_all_the_values_it_looks_at():
    # Each value alone takes well under the bound; a sender repeating the header must not
    # multiply it.
    condition = routing.compile_condition(cond("header", "regex", SLOW, header="X-Tag"))
    msg = parsed(headers=f"X-Tag: {'a' * 18}!\r\n" * 100)
    with finishes_within(2), pytest.raises(routing.PatternTimeout):
        routing.holds(condition, msg)


def test_text_is_searched_as_far_as_the_searched_length():
    pattern = routing.compile_pattern("needle")
    near = "x" * (routing.MAX_SEARCHED_CHARS - 6) + "needle"
    assert routing.first_match(pattern, [near]) is not None
    assert routing.first_match(pattern, ["x" + near]) is None


@pytest.mark.parametrize(
    "pattern",
    [
        r"\.com$",
        r"^taxi\b",
        r"\[(?P<category>\w+)\]",
        r"Total: (?P<amount>[0-9.,]+)",
        r"^(invoice|bill)\b",
        r"^Amount:\s*(?P<amount>.+)$",
        r"réf\.?\s*(?P<ref>\w+)",
        r"(?s)start(?P<middle>.*)end",
        r"(?P<user>[\w.+-]+)@(?P<domain>[\w.-]+)",
    ],
)
def test_expressions_find_what_re_finds(pattern):
    texts = [
        "Taxi to the airport",
        "[Travel] Taxi",
        "Total: 1,042.50 EUR\nAmount: 42.50\n",
        "Invoice 12\nbill",
        "Alice <alice@example.com>",
        "RÉF. ÄBC123 été",
        "start\nmiddle\nend",
        "",
    ]
    for ignore_case, multiline in ((True, False), (False, True)):
        flags = (re.IGNORECASE if ignore_case else 0) | (re.MULTILINE if multiline else 0)
        ours = routing.compile_pattern(pattern, ignore_case=ignore_case, multiline=multiline)
        for text in texts:
            theirs = re.search(pattern, text, flags)
            found = routing.first_match(ours, [text])
            assert (found and (found.span(), found.groupdict())) == (
                theirs and (theirs.span(), theirs.groupdict())
            ), text


@pytest.mark.parametrize("pattern", [r"\p{L}+", r"(?<name>x)", "(?V1)x", "(unclosed"])
def test_only_what_re_accepts_is_accepted(pattern):
    with pytest.raises(routing.RoutingError, match="is not valid"):
        routing.compile_condition(cond("subject", "regex", pattern))
