"""Notification templates: `{{ name }}` placeholders filled from case fields, nothing else.

Placeholders only, deliberately: designers write these templates in the browser, so they must
not be able to run code (as a full template language would allow), and a validator can list
every name a template uses and refuse unknown ones before a case ever needs it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# What is left of a placeholder written wrong, once the placeholders are taken out: "{{ case_id"
# with no closing braces, "{{ case id }}", "case_id }}". Such text is sent as it stands.
_STRAY_BRACES = re.compile(r"\{\{[^{}\n]{0,40}\}{0,2}|[^{}\n]{0,40}\}\}")

# Names every template may use besides the case type's own fields.
BUILTIN_NAMES = ("case_id", "case_type", "subject", "requester", "stage")


def placeholders(template: str) -> list[str]:
    """The placeholder names used in `template`, in order of appearance."""
    return [match.group(1) for match in PLACEHOLDER.finditer(template)]


def broken_placeholders(template: str) -> list[str]:
    """Text in `template` that looks like a placeholder but is not one, in order."""
    rest = PLACEHOLDER.sub("\n", template)  # a line break: nothing around it joins into "{{"
    return [match.group(0).strip() for match in _STRAY_BRACES.finditer(rest)]


def broken_placeholder_problem(template: str) -> str:
    """What in `template` looks like a placeholder but is not one, as a sentence part (no
    final stop), or ""."""
    broken = list(dict.fromkeys(broken_placeholders(template)))
    if not broken:
        return ""
    verb = "is not a placeholder" if len(broken) == 1 else "are not placeholders"
    return (
        f"{', '.join(f'“{b}”' for b in broken)} {verb} (write {{{{ name }}}}, with both pairs "
        "of braces)"
    )


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill the placeholders; an unknown name becomes an empty string."""
    return PLACEHOLDER.sub(lambda match: values.get(match.group(1), ""), template)
