"""The listener form: a text field for the folder, or a list when the server named its folders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wtforms import BooleanField, SelectChoice, SelectField, StringField, SubmitField
from wtforms.validators import InputRequired, Length, NumberRange

from webapp.forms.base import BaseForm, IntegerField, row_select
from webapp.models import EmailAccount, EmailChannel, ServiceEmailRule
from webapp.services import listeners as service

FORMAT_CHOICES = [
    SelectChoice("both", "Text and HTML"),
    SelectChoice("text", "Text only"),
    SelectChoice("html", "HTML only"),
]
AFTER_CHOICES = [
    SelectChoice("mark_read", "Mark as read (POP3: leave on the server)"),
    SelectChoice("delete", "Delete from the server"),
    SelectChoice("move", "Move to a folder (IMAP, Microsoft Graph)"),
]
_PROTOCOLS = {"imap": "IMAP", "pop3": "POP3", "graph": "Microsoft Graph"}


class ListenerForm(BaseForm):
    name = StringField("Name", validators=[InputRequired(), Length(max=100)])
    account_id = row_select("Email account", choose="an email account", optional=False)
    folder = StringField(
        "Folder to watch",
        validators=[InputRequired(), Length(max=255)],
        description="The server did not answer with its folders; type the folder name.",
    )
    message_format = SelectField("Message format", choices=FORMAT_CHOICES)
    rule_id = row_select("Service email rule", choose="a service email rule")
    channel_id = row_select(
        "Or an email channel",
        choose="an email channel",
        description="A channel routes each message by its sender, subject, … Pick a rule or "
        "a channel, not both.",
    )
    poll_interval_seconds = IntegerField(
        "Polling interval (seconds)",
        validators=[
            InputRequired("Enter the interval in seconds."),
            NumberRange(service.MIN_INTERVAL, service.MAX_INTERVAL),
        ],
    )
    max_batch = IntegerField(
        "Maximum messages per batch",
        validators=[
            InputRequired("Enter the batch size."),
            NumberRange(service.MIN_BATCH, service.MAX_BATCH),
        ],
        description=(
            "At most this many are fetched, stored and handed on together; a poll starts with 10."
        ),
    )
    after_processing = SelectField(
        "After storing a message", choices=AFTER_CHOICES, default="mark_read"
    )
    move_to_folder = StringField(
        "Move to folder", validators=[Length(max=255)], description="Only for “Move to a folder”."
    )
    max_message_bytes = IntegerField(
        "Maximum message size (bytes)",
        validators=[
            InputRequired("Enter the size limit in bytes."),
            NumberRange(service.MIN_MESSAGE_BYTES, service.MAX_MESSAGE_BYTES),
        ],
        description=(
            "A larger message fetched from the mailbox is kept whole in quarantine for an admin "
            "to look at; one a mail server pushes (flask mail ingest, the HTTP intake) is "
            "refused, so that the mail server tells its sender."
        ),
    )
    send_error_email = BooleanField(
        "Send an error email to the sender when a message cannot be processed"
    )
    use_idle = BooleanField(
        "Use IMAP IDLE when the server offers it",
        description="New mail is fetched within seconds while the IDLE watcher (flask "
        "listeners watch) runs; polls stay scheduled as well.",
    )
    enabled = BooleanField("Enabled")
    submit = SubmitField("Save listener")

    def set_choices(
        self,
        accounts: Sequence[EmailAccount],
        rules: Sequence[ServiceEmailRule],
        channels: Sequence[EmailChannel] = (),
    ) -> None:
        self.account_id.choices = [
            SelectChoice(
                a.id, f"{a.account_id}: {a.name} ({_PROTOCOLS.get(a.receiver_protocol, '')})"
            )
            for a in accounts
        ]
        self.rule_id.choices = [SelectChoice(None, "None yet (messages wait, stored)")] + [
            SelectChoice(r.id, r.name) for r in rules
        ]
        self.channel_id.choices = [SelectChoice(None, "None")] + [
            SelectChoice(c.id, c.name) for c in channels
        ]

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name).data for name in service.FIELDS}


class ListenerFolderForm(ListenerForm):
    """The same form when the server listed its folders: both folders are picked from them."""

    folder = SelectField("Folder to watch", validate_choice=False)
    move_to_folder = SelectField(
        "Move to folder", validate_choice=False, description="Only for “Move to a folder”."
    )

    def set_folders(self, folders: Sequence[str]) -> None:
        self.folder.choices = [SelectChoice(f, f) for f in folders]
        self.move_to_folder.choices = [SelectChoice("", "—")] + [
            SelectChoice(f, f) for f in folders
        ]
