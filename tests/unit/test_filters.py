from pathlib import Path

import pytest

from webapp.mail.filters import (
    FilterDecision,
    FilterOutcome,
    Limits,
    loop_breaker,
    run_filters,
    screen,
)
from webapp.mail.parse import parse_message


def _raw(body: str = "Hello", **headers: str) -> bytes:
    head = {
        "From": "Maria <maria@example.com>",
        "To": "expenses@casemail.test",
        "Subject": "Laptop",
        **headers,
    }
    lines = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in head.items())
    return (lines + "\r\n" + body).encode("utf-8")


def _outcome(raw: bytes) -> FilterOutcome:
    return run_filters(parse_message(raw))


def test_an_ordinary_message_is_accepted_and_nothing_fires():
    assert _outcome(_raw()) == FilterOutcome("accept")


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Auto_Submitted": "auto-replied"}, "Auto-Submitted: auto-replied."),
        ({"Auto_Submitted": "Auto-Generated; owner-email=x@y"}, "Auto-Submitted: auto-generated."),
        ({"Precedence": "bulk"}, "Precedence: bulk."),
        ({"Precedence": "junk"}, "Precedence: junk."),
        ({"Precedence": "list"}, "Precedence: list."),
        ({"X_Auto_Response_Suppress": "All"}, "X-Auto-Response-Suppress is present."),
        ({"X_Autoreply": "yes"}, "X-Autoreply is present."),
        ({"X_Autorespond": "Laptop"}, "X-Autorespond is present."),
    ],
)
def test_automatic_messages_are_ignored_with_the_reason(headers, reason):
    assert _outcome(_raw(**headers)) == FilterOutcome("ignore_automatic", (("auto_reply", reason),))


@pytest.mark.parametrize(
    "headers",
    [
        {"Auto_Submitted": "no"},
        {"Precedence": "normal"},
        {"Subject": "Out of Office: back Monday"},
        {"Subject": "Automatic reply: Laptop"},
    ],
)
def test_auto_reply_subjects_and_auto_submitted_no_are_not_enough(headers):
    assert _outcome(_raw(**headers)).action == "accept"


def test_an_empty_return_path_is_a_bounce_unless_the_message_says_it_is_an_auto_reply():
    assert _outcome(_raw(Return_Path="<>")).action == "bounce"
    vacation = _outcome(_raw(Return_Path="<>", Auto_Submitted="auto-replied"))
    assert vacation.action == "ignore_automatic"


@pytest.mark.parametrize("sender", ["MAILER-DAEMON@mx.example.com", "postmaster@example.com"])
def test_mailer_daemons_are_bounces(sender):
    outcome = _outcome(_raw(From=sender))
    assert outcome.action == "bounce"


def test_a_bounce_quoting_our_message_id_is_linked_to_it():
    body = "Delivery failed.\n\nMessage-ID: <ours-1@casemail.test>\nSubject: x\n"
    outcome = _outcome(_raw(body, From="MAILER-DAEMON@mx.example.com", Message_ID="<b@mx>"))
    assert outcome.original_message_id == "<ours-1@casemail.test>"


def test_a_delivery_report_takes_precedence_over_its_auto_submitted_header(golden):
    outcome = screen(golden("inbound/bounce_dsn_postfix.eml")).outcome
    assert outcome.action == "bounce"
    assert [name for name, _ in outcome.fired] == ["bounce", "auto_reply"]
    assert outcome.original_message_id == "<approval-EXP-1042.14@casemail.test>"


def test_size_limit_quarantines_without_parsing():
    screened = screen(_raw("x" * 2000), Limits(max_size=1000))
    assert screened.message is None
    assert screened.outcome.action == "quarantine"
    assert screened.outcome.fired == (
        ("structure", "The message is 2.0 KB, larger than the 1000 bytes limit."),
    )


def test_a_message_that_fails_to_parse_unforeseen_is_quarantined_not_raised(monkeypatch):
    import webapp.mail.filters as filters

    def unforeseen(raw, **limits):
        raise ValueError("a case no rule foresaw")

    monkeypatch.setattr(filters, "parse_message", unforeseen)
    screened = screen(_raw("Hello"))
    assert screened.message is None
    assert screened.outcome == FilterOutcome(
        "quarantine",
        (("structure", "The message could not be read (ValueError); it is kept whole."),),
    )


def test_structure_limits_quarantine_with_the_reason(golden):
    screened = screen(golden("inbound/broken/absurd_nesting.eml"))
    assert screened.message is None
    assert screened.outcome == FilterOutcome(
        "quarantine", (("structure", "The message nests MIME parts deeper than 20 levels."),)
    )


def test_loop_breaker_fires_at_the_limit_and_is_added_to_the_outcome():
    assert loop_breaker("a@example.com", 4, limit=5, window_minutes=60) is None
    assert loop_breaker(None, 50, limit=5, window_minutes=60) is None
    decision = loop_breaker("a@example.com", 5, limit=5, window_minutes=60)
    assert decision == FilterDecision(
        "loop_breaker",
        "quarantine",
        "a@example.com already opened 5 cases in the last 60 minutes (limit 5).",
    )
    outcome = FilterOutcome("accept").with_decision(decision)
    assert outcome.action == "quarantine"
    assert outcome.fired == (("loop_breaker", decision.reason),)
    ignored = FilterOutcome("ignore_automatic", (("auto_reply", "x"),)).with_decision(decision)
    assert ignored.action == "ignore_automatic"


def test_custom_chains_run_in_order_and_the_first_decides():
    def first(message, limits):
        return FilterDecision("first", "quarantine", "one")

    def second(message, limits):
        return FilterDecision("second", "ignore_automatic", "two")

    outcome = run_filters(parse_message(_raw()), chain=(first, second))
    assert outcome == FilterOutcome("quarantine", (("first", "one"), ("second", "two")))


@pytest.fixture
def golden():
    root = Path(__file__).resolve().parent.parent / "golden"
    return lambda name: (root / name).read_bytes()
