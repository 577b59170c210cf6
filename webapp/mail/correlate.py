"""Which case an incoming message belongs to, and how we know.

Evidence is tried from the strongest to the weakest: the reply token we put in the Reply-To of
our own mail, then the Message-IDs the message answers, then a case id in the subject.

Where a reply token is looked for:
- in the plus part of every recipient address (To, Cc, Delivered-To, X-Original-To), which is
  where a reply to our Reply-To `approvals+TOKEN@domain` carries it;
- in the `X-Casemail-Token` header of a message *attached* to this one (forward as attachment,
  or the returned headers in a bounce), since those headers are our own, carried unchanged.
It is deliberately not taken from the top-level `X-Casemail-Token` header (mail clients never
copy it into a reply, so there it only marks our own message coming back, which the filters
already ignore), nor from quoted text in a body (indistinguishable from typed text).
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from webapp.mail.parse import ParsedMessage

CaseT = TypeVar("CaseT")

Method = Literal["reply_token", "in_reply_to", "subject_case_id", "none"]

TOKEN_HEADER = "X-Casemail-Token"  # noqa: S105 - a header name, not a secret
# 128 random bits in lower-case base32: URL-safe, and safe in an address local part even when
# a mail server folds its case.
TOKEN_LENGTH = 26
_TOKEN_RE = re.compile(rf"^[a-z2-7]{{{TOKEN_LENGTH}}}$")
DEFAULT_CASE_ID_PATTERN = re.compile(r"\[([A-Z][A-Z0-9]{1,9}-\d{1,12})\]")

_DESCRIPTIONS: dict[Method, str] = {
    "reply_token": "matched by reply token",
    "in_reply_to": "matched by In-Reply-To/References",
    "subject_case_id": "matched by the case id in the subject",
    "none": "no match",
}

# Reply tokens, or case ids in a subject, looked up for one message: a reply names one, and a
# message naming thousands must not cost a query each.
MAX_CANDIDATES = 5


@dataclass(frozen=True)
class Correlation(Generic[CaseT]):
    method: Method
    key: str | None  # the token, Message-ID or case id that matched
    case: CaseT | None
    source: str = ""  # where the key was found, for the explanation

    @property
    def description(self) -> str:
        if self.method == "in_reply_to" and self.source:
            return f"matched by {self.source}"  # the header: In-Reply-To or References
        text = _DESCRIPTIONS[self.method]
        if self.method == "subject_case_id":
            return text  # its source is always the subject
        return f"{text} ({self.source})" if self.source else text


@dataclass(frozen=True)
class Lookups(Generic[CaseT]):
    """Read-only questions to the case store, answered by the caller."""

    by_reply_token: Callable[[str], CaseT | None]
    by_message_ids: Callable[[Sequence[str]], Mapping[str, CaseT]]
    by_case_id: Callable[[str], CaseT | None]


def new_reply_token() -> str:
    """A fresh reply token in the format `find_reply_tokens` recognises."""
    return base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=").lower()


def is_reply_token(value: str) -> bool:
    """Whether `value` has the shape of a reply token (lower case; callers fold case first)."""
    return bool(_TOKEN_RE.match(value))


def plus_address(address: str, token: str) -> str:
    """`approvals@example.com` + token -> `approvals+token@example.com`."""
    local, _, domain = address.rpartition("@")
    return f"{local.split('+', 1)[0]}+{token}@{domain}"


def find_reply_tokens(message: ParsedMessage) -> list[tuple[str, str]]:
    """Candidate tokens with where each was found, strongest first, without duplicates; at
    most MAX_CANDIDATES (a reply carries one: thousands of made-up ones must not cost a
    lookup each)."""
    found: dict[str, str] = {}
    for address in message.recipients:
        local = address.rpartition("@")[0]
        if "+" in local:
            tag = local.split("+", 1)[1].lower()
            if is_reply_token(tag):
                found.setdefault(tag, f"recipient {address}")
    for embedded in message.embedded:
        value = (embedded.get(TOKEN_HEADER) or "").strip().lower()
        if is_reply_token(value):
            found.setdefault(value, f"{TOKEN_HEADER} of an attached {embedded.content_type}")
    return list(found.items())[:MAX_CANDIDATES]


def find_case_ids(subject: str, pattern: re.Pattern[str] = DEFAULT_CASE_ID_PATTERN) -> list[str]:
    """Case ids such as EXP-1042 written in brackets in `subject`, in order; at most
    MAX_CANDIDATES."""
    seen: dict[str, None] = {}
    for match in pattern.finditer(subject):
        seen.setdefault(match.group(1), None)
        if len(seen) == MAX_CANDIDATES:
            break
    return list(seen)


def case_id_pattern(prefixes: Iterable[str] | None = None) -> re.Pattern[str]:
    """The subject pattern for `[PREFIX-123]`, limited to `prefixes` when given."""
    if prefixes is None:
        return DEFAULT_CASE_ID_PATTERN
    valid = sorted({p for p in prefixes if re.fullmatch(r"[A-Z][A-Z0-9]{1,9}", p)})
    if not valid:
        return re.compile(r"(?!)")  # no prefixes configured: nothing can match
    return re.compile(r"\[((?:" + "|".join(map(re.escape, valid)) + r")-\d{1,12})\]")


def correlate(
    message: ParsedMessage,
    lookups: Lookups[CaseT],
    *,
    subject_pattern: re.Pattern[str] = DEFAULT_CASE_ID_PATTERN,
) -> Correlation[CaseT]:
    """The case `message` belongs to and how it was found; method "none" when none."""
    for token, source in find_reply_tokens(message):
        case = lookups.by_reply_token(token)
        if case is not None:
            return Correlation("reply_token", token, case, source)

    message_ids = answered_ids(message)
    if message_ids:
        matches = lookups.by_message_ids(message_ids)
        for message_id in message_ids:
            if message_id in matches:
                where = "In-Reply-To" if message_id == message.in_reply_to else "References"
                return Correlation("in_reply_to", message_id, matches[message_id], where)

    for case_id in find_case_ids(message.subject, subject_pattern):
        case = lookups.by_case_id(case_id)
        if case is not None:
            return Correlation("subject_case_id", case_id, case, "subject")

    return Correlation("none", None, None)


def answered_ids(message: ParsedMessage) -> list[str]:
    """The Message-IDs `message` answers, most specific first."""
    # In-Reply-To names the message answered; References lists the thread oldest first, so the
    # most recent ancestors are the most specific evidence.
    ordered: dict[str, None] = {}
    if message.in_reply_to:
        ordered[message.in_reply_to] = None
    for message_id in reversed(message.references):
        ordered.setdefault(message_id, None)
    ordered.pop(message.message_id or "", None)
    return list(ordered)
