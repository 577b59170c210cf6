"""Email instantiation: one step that makes a case type's cases come from a mailbox."""

from __future__ import annotations

import hashlib

from sqlalchemy import func, select

from webapp.extensions import db
from webapp.models import (
    CaseType,
    EmailAccount,
    EmailListener,
    Role,
    RuleAction,
    ServiceEmailRule,
    User,
)
from webapp.services import listeners as listener_service
from webapp.services import rules as rule_service
from webapp.services.compose import has_sender

MAX_NAME = 100


class InstantiationError(ValueError):
    """Nothing was created; the message is fit to show, `field_errors` say which field."""

    def __init__(self, message: str, field_errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.field_errors = field_errors or {}


def has_receiver(account: EmailAccount) -> bool:
    """Whether the account is set up to read mail (a server to poll, or Microsoft Graph)."""
    if account.receiver_protocol == "graph":
        return True
    return account.receiver_protocol in ("imap", "pop3") and bool(account.receiver_host)


def receiving_accounts() -> list[EmailAccount]:
    """Accounts with a receiver, the ones a case type can take its mail from."""
    accounts = db.session.scalars(select(EmailAccount).order_by(EmailAccount.account_id))
    return [a for a in accounts if has_receiver(a)]


def instance_name(case_type: CaseType, account: EmailAccount, folder: str) -> str:
    """The name given to both the listener and the rule: "<Case type> from <account>", with
    the folder unless it is INBOX.

    A name longer than either page takes is cut, and ends with a short digest of the whole
    name: two folders whose names differ only after the cut still get two names, and one
    folder always gets the same name.
    """
    name = f"{case_type.name} from {account.account_id}"
    if folder.upper() != "INBOX":
        name += f" ({folder})"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return name[: MAX_NAME - len(digest) - 2].rstrip() + "… " + digest


def feeding_listeners(case_type: CaseType) -> list[EmailListener]:
    """Listeners whose rule opens or updates cases of `case_type`, by name."""
    return list(
        db.session.scalars(
            select(EmailListener)
            .join(ServiceEmailRule, EmailListener.rule_id == ServiceEmailRule.id)
            .where(ServiceEmailRule.case_type_id == case_type.id)
            .order_by(EmailListener.name)
        )
    )


def create_cases_from_email(
    case_type: CaseType, account: EmailAccount | None, folder: str, user: User
) -> tuple[EmailListener, ServiceEmailRule]:
    """Create a "create a case" rule for `case_type` and a listener on `account`/`folder`;
    the account becomes the case type's sending account when it has none.

    Raises InstantiationError (nothing saved) when the user is not an admin, the case type is
    not published, the account has no receiver, a listener already brings this folder's mail
    to the case type, the name is taken, or the listener or rule services refuse the values.
    """
    if user.role != Role.ADMIN:
        raise InstantiationError(
            "Only an admin can set up email listeners: ask an admin to create cases from email."
        )
    if case_type.latest_version is None:
        raise InstantiationError(
            f"Publish {case_type.name} first: cases from email use its newest published version."
        )
    if account is None:
        raise InstantiationError(
            "Choose an email account from the list.", {"account_id": "Choose an email account."}
        )
    if not has_receiver(account):
        message = (
            f"The account {account.account_id} has no receiver set up: "
            "give it an IMAP or POP3 server first."
        )
        raise InstantiationError(message, {"account_id": message})
    folder = folder.strip() or "INBOX"
    already = next(
        (
            listener
            for listener in feeding_listeners(case_type)
            if listener.account_id == account.id
            and listener_service.same_folder(listener.folder, folder)
        ),
        None,
    )
    if already is not None:
        message = (
            f"The listener {already.name} already brings the mail of {already.folder} in "
            f"{account.account_id} to {case_type.name}: change it on the listeners page."
        )
        raise InstantiationError(message, {"folder": message})
    name = instance_name(case_type, account, folder)
    taken = _name_taken(name)
    if taken:
        raise InstantiationError(taken, {"account_id": taken})
    values = {
        **listener_service.listener_values(listener_service.new_listener()),
        "name": name,
        "account_id": account.id,
        "folder": folder,
        "rule_id": None,
    }
    # Check the listener before anything is saved, so that a refusal leaves no rule behind.
    errors = listener_service.listener_errors(None, values)
    if errors:
        raise InstantiationError(" ".join(errors.values()), errors)
    try:
        rule = rule_service.save_rule(
            None,
            rule_service.RuleData(
                name=name,
                action=RuleAction.CREATE_CASE.value,
                case_type_id=case_type.id,
                # The subject becomes the case subject and the sender its requester without
                # any mapping; further fields are the admin's to map on the rule's page.
                mappings=[],
            ),
        )
        listener = listener_service.save_listener(None, {**values, "rule_id": rule.id})
    except rule_service.RuleError as exc:
        raise InstantiationError(str(exc), exc.field_errors) from None
    except listener_service.ListenerError as exc:
        raise InstantiationError(str(exc), exc.errors) from None
    if case_type.email_account_id is None and has_sender(account):
        # Mail about these cases then goes out from the mailbox they come from.
        case_type.email_account = account
        db.session.flush()
    return listener, rule


def _name_taken(name: str) -> str:
    """Why `name` cannot be used for the new listener and rule, or ""."""
    if db.session.scalar(select(EmailListener.id).where(EmailListener.name == name)):
        return f"A listener named {name} already exists: edit it on the listeners page."
    rule_names = select(ServiceEmailRule.id).where(
        func.lower(ServiceEmailRule.name) == name.lower()
    )
    if db.session.scalar(rule_names):
        return f"A rule named {name} already exists: edit it on the rules page."
    return ""
