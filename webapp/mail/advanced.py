"""Advanced key/value overrides of an email account, checked against a table of supported keys.

The names follow the JavaMail properties that admins of other mail platforms already know;
docs/email-accounts.md lists each key with the wording of this table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Kind = Literal["milliseconds", "flag", "hostname"]


class AdvancedError(ValueError):
    """An override is unknown or has a bad value; the message names it."""


@dataclass(frozen=True)
class AdvancedKey:
    kind: Kind
    description: str


SENDER_KEYS: dict[str, AdvancedKey] = {
    "mail.smtp.connectiontimeout": AdvancedKey(
        "milliseconds", "How long to wait for the TCP connection to the SMTP server."
    ),
    "mail.smtp.timeout": AdvancedKey(
        "milliseconds",
        "How long to wait for each answer of the SMTP server, and for the TLS handshake.",
    ),
    "mail.smtp.auth.plain.disable": AdvancedKey(
        "flag", "Never sign in with AUTH PLAIN (AUTH LOGIN is used if the server offers it)."
    ),
    "mail.smtp.auth.login.disable": AdvancedKey(
        "flag", "Never sign in with AUTH LOGIN (AUTH PLAIN is used if the server offers it)."
    ),
    "mail.smtp.localhost": AdvancedKey(
        "hostname", "The host name sent in EHLO (default: this machine's name)."
    ),
}

RECEIVER_KEYS: dict[str, AdvancedKey] = {
    "mail.imap.connectiontimeout": AdvancedKey(
        "milliseconds", "How long to wait for the TCP connection to the IMAP server."
    ),
    "mail.imap.timeout": AdvancedKey(
        "milliseconds",
        "How long to wait for each answer of the IMAP server (and the TLS handshake).",
    ),
    "mail.imap.auth.plain.disable": AdvancedKey(
        "flag", "IMAP without SSL/TLS: sign in with the LOGIN command, never AUTHENTICATE PLAIN."
    ),
    "mail.imaps.auth.plain.disable": AdvancedKey(
        "flag", "IMAP with SSL/TLS: sign in with the LOGIN command, never AUTHENTICATE PLAIN."
    ),
    "mail.pop3.connectiontimeout": AdvancedKey(
        "milliseconds", "How long to wait for the TCP connection to the POP3 server."
    ),
    "mail.pop3.timeout": AdvancedKey(
        "milliseconds",
        "How long to wait for each answer of the POP3 server (and the TLS handshake).",
    ),
}

MAX_MILLISECONDS = 600_000
_FLAG_VALUES = {"true": "true", "false": "false", "yes": "true", "no": "false"}
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def _normalise(name: str, spec: AdvancedKey, value: str) -> str:
    if spec.kind == "milliseconds":
        if not value.isdigit() or not 1 <= int(value) <= MAX_MILLISECONDS:
            raise AdvancedError(
                f"{name} must be a whole number of milliseconds from 1 to {MAX_MILLISECONDS}, "
                f"not {value!r}."
            )
        return str(int(value))
    if spec.kind == "flag":
        flag = _FLAG_VALUES.get(value.lower())
        if flag is None:
            raise AdvancedError(f"{name} must be true or false, not {value!r}.")
        return flag
    if not _HOSTNAME.match(value):
        raise AdvancedError(f"{name} must be a host name, not {value!r}.")
    return value


def parse_overrides(text: str, supported: Mapping[str, AdvancedKey]) -> dict[str, str]:
    """Read `key=value` lines (blank lines and `#` comments skipped).

    Raises AdvancedError naming the first unknown key, repeated key or bad value.
    """
    result: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, equals, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not equals or not name:
            raise AdvancedError(f"Line {number} is not of the form key=value: {line!r}.")
        spec = supported.get(name)
        if spec is None:
            raise AdvancedError(
                f"Unknown key {name} (line {number}); the supported keys are "
                f"{', '.join(sorted(supported))}."
            )
        if name in result:
            raise AdvancedError(f"The key {name} is given twice.")
        result[name] = _normalise(name, spec, value)
    return result


def format_overrides(overrides: Mapping[str, str]) -> str:
    """The text form of stored overrides, one `key=value` a line, as the editor shows them."""
    return "\n".join(f"{name}={value}" for name, value in sorted(overrides.items()))


def seconds(overrides: Mapping[str, str], name: str, default: float) -> float:
    """A millisecond override as seconds, or `default` when it is not set."""
    value = overrides.get(name)
    return int(value) / 1000 if value else default


def flag(overrides: Mapping[str, str], name: str) -> bool:
    return overrides.get(name) == "true"
