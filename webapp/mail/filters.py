"""The filter chain an incoming message passes before it may open or update a case.

Filters run in order and each one that fires is recorded with its reason, so the rule tester
and the message view can say why. The first filter that fires decides the action; the order
is therefore the priority: limits (quarantine) before bounces before automatic replies.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from webapp.mail.parse import MessageStructureError, ParsedMessage, parse_message

log = logging.getLogger(__name__)

Action = Literal["accept", "ignore_automatic", "bounce", "quarantine"]

DEFAULT_MAX_SIZE = 25 * 1024 * 1024

_AUTOMATIC_PRECEDENCE = frozenset(("bulk", "junk", "list", "auto_reply"))
_BOUNCE_LOCAL_PARTS = frozenset(("mailer-daemon", "postmaster"))
_MESSAGE_ID_LINE_RE = re.compile(r"^\s*Message-ID:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Limits:
    max_size: int = DEFAULT_MAX_SIZE
    max_parts: int = 500
    max_depth: int = 20


@dataclass(frozen=True)
class FilterDecision:
    filter: str
    action: Action
    reason: str
    original_message_id: str | None = None


@dataclass(frozen=True)
class FilterOutcome:
    action: Action
    fired: tuple[tuple[str, str], ...] = ()  # (filter name, reason), in chain order
    original_message_id: str | None = None  # for bounces: the message that bounced

    def with_decision(self, decision: FilterDecision | None) -> FilterOutcome:
        """This outcome with a later decision (such as the loop breaker's) added."""
        if decision is None:
            return self
        action = self.action if self.action != "accept" else decision.action
        return replace(
            self,
            action=action,
            fired=(*self.fired, (decision.filter, decision.reason)),
            original_message_id=self.original_message_id or decision.original_message_id,
        )


Filter = Callable[[ParsedMessage, Limits], FilterDecision | None]


def structure_filter(message: ParsedMessage, limits: Limits) -> FilterDecision | None:
    """Quarantine what is too large or is not an email message at all."""
    if message.raw_size == 0:
        return FilterDecision("structure", "quarantine", "The message is empty.")
    if message.raw_size > limits.max_size:
        return FilterDecision("structure", "quarantine", _too_large(message.raw_size, limits))
    if not message.headers:
        return FilterDecision(
            "structure", "quarantine", "The message has no headers; it is not an email message."
        )
    if not message.from_addresses:
        if message.from_header_count:
            return FilterDecision(
                "structure", "quarantine", "The From header names no address mail can be sent to."
            )
        return FilterDecision(
            "structure", "quarantine", "The message has no sender address (From)."
        )
    return None


def bounce_filter(message: ParsedMessage, limits: Limits) -> FilterDecision | None:
    """Delivery failure reports (RFC 3464) and mail from mailer daemons."""
    if message.content_type == "multipart/report" and message.report_type == "delivery-status":
        return FilterDecision(
            "bounce",
            "bounce",
            "It is a delivery status report (RFC 3464).",
            _bounced_message_id(message),
        )
    for _, address in message.from_addresses:
        local = address.rpartition("@")[0].lower()
        if local in _BOUNCE_LOCAL_PARTS:
            reason = f"It comes from {local.upper()}."
            return FilterDecision("bounce", "bounce", reason, _bounced_message_id(message))
    if message.content_type == "multipart/report":
        kind = message.report_type or "unknown"
        return FilterDecision("bounce", "ignore_automatic", f"It is an automatic report ({kind}).")
    return_path = (message.header("Return-Path") or "").strip()
    # RFC 3834 asks automatic replies to use an empty return path too: those are left to the
    # auto-reply filter so that a vacation notice is not mistaken for a failed delivery.
    if return_path.replace(" ", "") == "<>" and not _automatic_markers(message):
        return FilterDecision(
            "bounce",
            "bounce",
            "It was sent with an empty Return-Path (<>).",
            _bounced_message_id(message),
        )
    return None


def auto_reply_filter(message: ParsedMessage, limits: Limits) -> FilterDecision | None:
    """Automatic replies and bulk mail (RFC 3834 and the common vendor headers)."""
    markers = _automatic_markers(message)
    if markers:
        return FilterDecision("auto_reply", "ignore_automatic", "; ".join(markers) + ".")
    return None


DEFAULT_CHAIN: tuple[Filter, ...] = (structure_filter, bounce_filter, auto_reply_filter)


def run_filters(
    message: ParsedMessage, limits: Limits | None = None, chain: Sequence[Filter] = DEFAULT_CHAIN
) -> FilterOutcome:
    """Run every filter of `chain`; the first that fires decides the action."""
    limits = limits or Limits()
    action: Action = "accept"
    fired: list[tuple[str, str]] = []
    original: str | None = None
    for check in chain:
        decision = check(message, limits)
        if decision is None:
            continue
        fired.append((decision.filter, decision.reason))
        if action == "accept":
            action = decision.action
            original = decision.original_message_id
    return FilterOutcome(action=action, fired=tuple(fired), original_message_id=original)


@dataclass(frozen=True)
class Screened:
    """A raw message after parsing and filtering; `message` is None when it was not parsed."""

    message: ParsedMessage | None
    outcome: FilterOutcome = field(default_factory=lambda: FilterOutcome("accept"))


def screen(raw: bytes, limits: Limits | None = None) -> Screened:
    """Parse `raw` within `limits` and run the default chain; never raises."""
    limits = limits or Limits()
    if len(raw) > limits.max_size:
        # Too large to be worth parsing: quarantine on the size alone.
        reason = _too_large(len(raw), limits)
        return Screened(None, FilterOutcome("quarantine", (("structure", reason),)))
    try:
        message = parse_message(raw, max_parts=limits.max_parts, max_depth=limits.max_depth)
        return Screened(message, run_filters(message, limits))
    except MessageStructureError as error:
        return Screened(None, FilterOutcome("quarantine", (("structure", str(error)),)))
    except Exception as error:
        # A message no rule foresaw must not fail its batch: it waits in quarantine, kept
        # whole, for an admin (and the log has the trace for a fix).
        log.exception("a message could not be screened")
        reason = f"The message could not be read ({type(error).__name__}); it is kept whole."
        return Screened(None, FilterOutcome("quarantine", (("structure", reason),)))


def loop_breaker(
    sender: str | None, cases_in_window: int, *, limit: int, window_minutes: int
) -> FilterDecision | None:
    """Quarantine when `sender` already opened `limit` cases in the window.

    The caller counts the cases this sender opened during the last `window_minutes` (the state
    lives in the database) and adds the decision with `FilterOutcome.with_decision`. Quarantine
    rather than ignore: a real person caught by the limit loses nothing, an admin can replay.
    """
    if sender is None or limit <= 0 or cases_in_window < limit:
        return None
    return FilterDecision(
        "loop_breaker",
        "quarantine",
        f"{sender} already opened {cases_in_window} cases in the last {window_minutes} "
        f"minutes (limit {limit}).",
    )


def _automatic_markers(message: ParsedMessage) -> list[str]:
    markers: list[str] = []
    auto_submitted = message.header("Auto-Submitted")
    if auto_submitted is not None:
        keyword = auto_submitted.split(";", 1)[0].strip().lower()
        if keyword and keyword != "no":
            markers.append(f"Auto-Submitted: {keyword}")
    precedence = (message.header("Precedence") or "").strip().lower()
    if precedence in _AUTOMATIC_PRECEDENCE:
        markers.append(f"Precedence: {precedence}")
    if message.header("X-Auto-Response-Suppress") is not None:
        markers.append("X-Auto-Response-Suppress is present")
    for name in ("X-Autoreply", "X-Autorespond"):
        value = message.header(name)
        if value is not None and value.strip().lower() not in ("no", "false", "0"):
            markers.append(f"{name} is present")
    if (message.header("X-Autogenerated") or "").strip().lower() == "reply":
        markers.append("X-Autogenerated: reply")
    return markers


def _bounced_message_id(message: ParsedMessage) -> str | None:
    # The returned headers of the original message are the reliable source; a bounce without
    # a report often quotes them in its text instead.
    for embedded in message.embedded:
        if embedded.message_id:
            return embedded.message_id
    for found in _MESSAGE_ID_LINE_RE.finditer(message.text):
        if found.group(1) != message.message_id:
            return found.group(1)
    return None


def _too_large(size: int, limits: Limits) -> str:
    return f"The message is {_size(size)}, larger than the {_size(limits.max_size)} limit."


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / (1024 * 1024):.1f} MB"
