"""Helpers for building queries from text people type."""

from __future__ import annotations


def like_escaped(text: str) -> str:
    """`text` matched literally by LIKE ... ESCAPE '\\' (% and _ are wildcards otherwise)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
