"""Notification templates: `{{ name }}` placeholders filled from case fields, nothing else.

Placeholders only, deliberately: designers write these templates in the browser, so they must
not be able to run code (as a full template language would allow), and a validator can list
every name a template uses and refuse unknown ones before a case ever needs it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

# Names every template may use besides the case type's own fields.
BUILTIN_NAMES = ("case_id", "case_type", "subject", "requester", "stage")


def placeholders(template: str) -> list[str]:
    """The placeholder names used in `template`, in order of appearance."""
    return [match.group(1) for match in PLACEHOLDER.finditer(template)]


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill the placeholders; an unknown name becomes an empty string."""
    return PLACEHOLDER.sub(lambda match: values.get(match.group(1), ""), template)
