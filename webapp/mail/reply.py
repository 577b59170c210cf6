"""Reading an approver's answer: the new text of a reply, and the decision on its first line."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from webapp.mail.parse import ParsedMessage

Verdict = Literal["approve", "reject"]

# Words that are a decision whatever follows them ("Approved, go ahead").
_STRONG: dict[str, Verdict] = {
    **dict.fromkeys(("APPROVE", "APPROVED", "GENEHMIGT", "GENEHMIGEN"), "approve"),
    **dict.fromkeys(("APPROUVE", "APPROUVER", "APROBADO", "APROBAR"), "approve"),
    **dict.fromkeys(("REJECT", "REJECTED", "ABGELEHNT", "ABLEHNEN"), "reject"),
    **dict.fromkeys(("REJETE", "REJETER", "REFUSE", "RECHAZADO", "RECHAZAR"), "reject"),
}
# Everyday words count only when they stand alone or before punctuation: "No, too costly" is a
# rejection, "No problem, approved" is not.
_WEAK: dict[str, Verdict] = {
    **dict.fromkeys(("YES", "OK", "JA", "OUI", "SI"), "approve"),
    **dict.fromkeys(("NO", "NEIN", "NON"), "reject"),
}
_FIRST_WORD_RE = re.compile(r"^[\W_]*?([A-Za-z]+)(.*)$", re.DOTALL)
_WORD_RE = re.compile(r"[A-Za-z]+")
_ALONE_RE = re.compile(r"^\s*(?:[^\w\s]|$)")

_QUOTE_RE = re.compile(r"^\s*>")
_ATTRIBUTION_START_RE = re.compile(r"^\s*(On|Am|Le|El)\s", re.IGNORECASE)
_ATTRIBUTION_RE = re.compile(
    r"^\s*(?:"
    r"On\s.+\swrote\s*:"
    r"|Am\s.+\sschrieb\s.*:"
    r"|Le\s.+\sa\s+[ée]crit\s*:"
    r"|El\s.+\sescribi[óo]\s*:"
    r")\s*$",
    re.IGNORECASE | re.DOTALL,
)
# Real attributions are short; the bound also keeps the pattern's backtracking cheap.
_ATTRIBUTION_MAX_LENGTH = 400
_ORIGINAL_MESSAGE_RE = re.compile(
    r"^\s*-{2,}\s*(?:Original Message|Urspr[üu]ngliche Nachricht|Message d'origine"
    r"|Mensaje original|Forwarded message|Weitergeleitete Nachricht|Message transf[ée]r[ée]"
    r"|Mensaje reenviado)\s*-{2,}\s*$",
    re.IGNORECASE,
)
_HEADER_FROM_RE = re.compile(r"^\s*\*?(?:From|Von|De)\s*\*?\s*:", re.IGNORECASE)
_HEADER_NEXT_RE = re.compile(
    r"^\s*\*?(?:Sent|Date|Gesendet|Datum|Envoy[ée]|Enviado|Fecha|To|An|[ÀA]|Para)\s*\*?\s*:",
    re.IGNORECASE,
)
_SIGNATURE_RE = re.compile(r"^--\s?$")
_MOBILE_SIGNATURE_RE = re.compile(
    r"^\s*(?:"
    r"Sent from (?:my|Mail for|Yahoo Mail|Outlook|Samsung|Proton Mail)\b.{0,40}"
    r"|Get Outlook for (?:iOS|Android)"
    r"|(?:Von meinem|Gesendet von meinem|Gesendet mit der) .{0,40}"
    r"|Von (?:meinem|Outlook|Yahoo) .{0,30}gesendet"
    r"|Envoy[ée] (?:de|depuis) (?:mon|ma|l'application|Outlook|Yahoo)\b.{0,40}"
    r"|Enviado (?:desde|de) (?:mi|Outlook|Yahoo)\b.{0,40}"
    r")\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict | None
    comment: str
    word: str | None = None  # the decision word as written
    new_text: str = ""  # what the reply says once quotes and signatures are removed


def extract_new_text(text: str) -> str:
    """What the sender wrote in this reply: no quoted history, no signature."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if _SIGNATURE_RE.match(line) or _MOBILE_SIGNATURE_RE.match(line):
            break
        if _ORIGINAL_MESSAGE_RE.match(line) or _is_header_block(lines, index):
            break
        span = _attribution_span(lines, index)
        if span:
            following = _next_non_empty(lines, index + span)
            if following is None or not _QUOTE_RE.match(lines[following]):
                break  # history that is not quoted with '>': everything below is old
            index += span
            continue
        if _QUOTE_RE.match(line):
            index += 1
            continue
        if _is_outlook_rule(line) and _is_header_block(lines, index + 1):
            break
        kept.append(line.rstrip())
        index += 1
    return "\n".join(kept).strip("\n")


def parse_decision(new_text: str) -> Decision:
    """The decision word on the first non-empty line of `new_text`, and the comment after it."""
    stripped = new_text.strip()
    if not stripped:
        return Decision(None, "", None, "")
    first, _, following = stripped.partition("\n")
    match = _FIRST_WORD_RE.match(_fold(first))
    if match is None:
        return Decision(None, stripped, None, stripped)
    candidate, after = match.group(1).upper(), match.group(2)
    # A leading strong word is trusted ("Rejected: the approved budget is spent").
    verdict: Verdict | None = _STRONG.get(candidate)
    weak = _WEAK.get(candidate)
    if verdict is None and weak and _ALONE_RE.match(after) and not _contradicts(weak, after):
        verdict = weak
    if verdict is None:
        # No decision: the whole new text is kept so that the refusal can quote it.
        return Decision(None, stripped, None, stripped)
    word = first[match.start(1) : match.end(1)]
    rest_of_line = first[match.end(1) :]
    comment_lines = [rest_of_line.lstrip(" \t.,;:!?*_)-\u2013\u2014"), *following.split("\n")]
    comment = "\n".join(comment_lines).strip()
    return Decision(verdict, comment, word, stripped)


def decision_from_message(message: ParsedMessage) -> Decision:
    """The decision in a reply message, read from its text body (or the text of its HTML)."""
    return parse_decision(extract_new_text(message.text))


def _fold(text: str) -> str:
    """`text` without accents ("approuvé" -> "approuve"), character for character."""
    out = []
    for ch in text:
        base = "".join(c for c in unicodedata.normalize("NFD", ch) if not unicodedata.combining(c))
        out.append(base[:1] or ch)
    return "".join(out)


def _contradicts(verdict: Verdict, rest: str) -> bool:
    # "OK, rejected" names both decisions: better to ask again than to guess.
    return any(_STRONG.get(word.upper()) not in (None, verdict) for word in _WORD_RE.findall(rest))


def _attribution_span(lines: list[str], index: int) -> int:
    """How many lines an "On <date>, <person> wrote:" attribution at `index` spans; 0 if none."""
    if not _ATTRIBUTION_START_RE.match(lines[index]):
        return 0
    # Mail clients wrap long attributions, so look at up to three joined lines.
    for span in (1, 2, 3):
        if index + span > len(lines):
            break
        joined = " ".join(line.strip() for line in lines[index : index + span])
        if len(joined) <= _ATTRIBUTION_MAX_LENGTH and _ATTRIBUTION_RE.match(joined):
            return span
    return 0


def _is_header_block(lines: list[str], index: int) -> bool:
    """An Outlook-style "From: … / Sent: …" block of the quoted message starts at `index`."""
    if index >= len(lines) or not _HEADER_FROM_RE.match(lines[index]):
        return False
    following = [line for line in lines[index + 1 : index + 4] if line.strip()]
    return any(_HEADER_NEXT_RE.match(line) for line in following[:2])


def _is_outlook_rule(line: str) -> bool:
    return len(line.strip()) >= 10 and set(line.strip()) <= {"_", "-"}


def _next_non_empty(lines: list[str], start: int) -> int | None:
    for index in range(start, len(lines)):
        if lines[index].strip():
            return index
    return None
