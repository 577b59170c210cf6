"""Helpers for building queries from text people type."""

from __future__ import annotations


def like_escaped(text: str) -> str:
    """`text` matched literally by LIKE ... ESCAPE '\\' (% and _ are wildcards otherwise)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def still_used(kind: str, names: list[str], verbs: tuple[str, str], what: str, then: str) -> str:
    """Why something cannot go: "The listener Orders uses this rule; change it first." or
    "The listeners A, B use this rule; change them first.", from the singular `kind`, the
    verb's (singular, plural) forms, and `then` with {them} for "it" or "them"."""
    if len(names) == 1:
        head = f"The {kind} {names[0]} {verbs[0]} {what}"
    else:
        head = f"The {kind}s {', '.join(names)} {verbs[1]} {what}"
    return f"{head}; {then.format(them='it' if len(names) == 1 else 'them')}."
