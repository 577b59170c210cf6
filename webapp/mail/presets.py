"""Server settings of the common email providers, used to fill an account's connection fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    security: str


@dataclass(frozen=True)
class Preset:
    label: str
    smtp: Server | None
    imap: Server | None
    pop3: Server | None
    # Microsoft Graph is offered for sending and receiving only with this provider.
    graph: bool = False


OFFICE365 = "office365"
OTHER = "other"

PRESETS: dict[str, Preset] = {
    "gmail": Preset(
        "Gmail",
        Server("smtp.gmail.com", 587, "starttls"),
        Server("imap.gmail.com", 993, "ssl"),
        Server("pop.gmail.com", 995, "ssl"),
    ),
    OFFICE365: Preset(
        "Microsoft Office 365",
        Server("smtp.office365.com", 587, "starttls"),
        Server("outlook.office365.com", 993, "ssl"),
        Server("outlook.office365.com", 995, "ssl"),
        graph=True,
    ),
    "outlook": Preset(
        "Outlook.com",
        Server("smtp-mail.outlook.com", 587, "starttls"),
        Server("outlook.office365.com", 993, "ssl"),
        Server("outlook.office365.com", 995, "ssl"),
    ),
    "yahoo": Preset(
        "Yahoo",
        Server("smtp.mail.yahoo.com", 465, "smtps"),
        Server("imap.mail.yahoo.com", 993, "ssl"),
        Server("pop.mail.yahoo.com", 995, "ssl"),
    ),
    # iCloud Mail offers no POP3.
    "icloud": Preset(
        "iCloud",
        Server("smtp.mail.me.com", 587, "starttls"),
        Server("imap.mail.me.com", 993, "ssl"),
        None,
    ),
    "zoho": Preset(
        "Zoho",
        Server("smtp.zoho.com", 465, "smtps"),
        Server("imap.zoho.com", 993, "ssl"),
        Server("pop.zoho.com", 995, "ssl"),
    ),
    "fastmail": Preset(
        "Fastmail",
        Server("smtp.fastmail.com", 465, "smtps"),
        Server("imap.fastmail.com", 993, "ssl"),
        Server("pop.fastmail.com", 995, "ssl"),
    ),
    OTHER: Preset("Other", None, None, None),
}


def presets_as_data() -> dict[str, Any]:
    """The presets as plain data for the page script that fills the fields."""
    return {
        key: {
            "smtp": asdict(p.smtp) if p.smtp else None,
            "imap": asdict(p.imap) if p.imap else None,
            "pop3": asdict(p.pop3) if p.pop3 else None,
            "graph": p.graph,
        }
        for key, p in PRESETS.items()
    }
