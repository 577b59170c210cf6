"""Configuration as code: export work groups, email accounts (without secrets), case types,
service email rules, email channels and listeners to YAML and import them back, idempotently."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select

from webapp.casetypes.definition import Definition, DefinitionError, parse_definition
from webapp.extensions import db
from webapp.mail import advanced
from webapp.models import (
    AuthProfile,
    CaseType,
    EmailAccount,
    EmailChannel,
    EmailListener,
    Keystore,
    KeystoreKind,
    ServiceEmailRule,
    User,
)
from webapp.secretbox import SecretError, get_secretbox
from webapp.services import accounts as account_service
from webapp.services import casetypes as casetype_service
from webapp.services import channels as channel_service
from webapp.services import compose as compose_service
from webapp.services import groups as group_service
from webapp.services import listeners as listener_service
from webapp.services import rules as rule_service

ENV_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
CASE_TYPE_KEYS = {"name", "prefix", "description", "email_account", "publish", "fields", "stages"}
GROUP_KEYS = {"name", "members"}


class ConfigError(ValueError):
    """The configuration cannot be imported; every message names the file and the key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class ImportReport:
    changes: list[str] = field(default_factory=list)
    # Where the file declares each account, case type, rule and channel: (kind, key) -> path,
    # so that a reference to one that was refused points to its problems.
    declared: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(not line.endswith(": unchanged") for line in self.changes)


def export_config() -> dict[str, Any]:
    """Everything exportable, as plain data for YAML (no secrets)."""
    groups = [
        {"name": group.name, "members": [user.email for user in group.members]}
        for group in group_service.all_groups()
    ]
    case_types = []
    for case_type in db.session.scalars(select(CaseType).order_by(CaseType.name)):
        draft = casetype_service.draft_definition(case_type).to_dict()
        latest = case_type.latest_version
        account = case_type.email_account
        case_types.append(
            {
                "name": case_type.name,
                "prefix": case_type.prefix,
                "description": case_type.description,
                "email_account": account.account_id if account is not None else None,
                "publish": latest is not None and latest.definition == draft,
                **draft,
            }
        )
    return {
        "groups": groups,
        "accounts": [_export_account(a) for a in _all(EmailAccount, EmailAccount.account_id)],
        "case_types": case_types,
        "rules": [_export_rule(r) for r in rule_service.all_rules()],
        "channels": [_export_channel(c) for c in channel_service.all_channels()],
        "listeners": [_export_listener(x) for x in listener_service.list_listeners()],
    }


def _all(model: type[Any], order: Any) -> list[Any]:
    return list(db.session.scalars(select(model).order_by(order)))


def dump_yaml(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True, width=100)


def substitute_env(value: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    """Replace ${NAME} in every text value with the environment variable ($$ is a $)."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group(1)
            if name not in env:
                problems.append(f"{path}: the environment variable {name} is not set.")
                return ""
            return env[name]

        return ENV_REFERENCE.sub(replace, value)
    if isinstance(value, list):
        return [substitute_env(v, env, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: substitute_env(v, env, f"{path}.{k}", problems) for k, v in value.items()}
    return value


def import_config(text: str, source: str, env: Mapping[str, str] | None = None) -> ImportReport:
    """Create or update what the YAML describes; raises ConfigError naming file and key.

    Nothing is changed when any part is invalid (the caller rolls back on ConfigError).
    Sections are imported in the order of SECTIONS, so that each finds what it names.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError([f"{source}{where}: this is not valid YAML."]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{source}: the file must be a mapping with sections such as case_types."]
        )
    problems: list[str] = []
    environment = os.environ if env is None else env
    data = {
        key: substitute_env(value, environment, f"{source}: {key}", problems)
        for key, value in data.items()
    }
    unknown = sorted(set(data) - set(SECTIONS))
    for key in unknown:
        problems.append(f"{source}: {key}: unknown section; known: {', '.join(SECTIONS)}.")
    if problems:
        raise ConfigError(problems)
    report = ImportReport(declared=_declared(data))
    for key, importer in SECTIONS.items():
        if key in data:
            # Later sections are still checked, so that one run names every problem; what
            # was saved meanwhile is rolled back by the caller.
            try:
                importer(data[key], f"{source}: {key}", report)
            except ConfigError as exc:
                problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return report


# What references name, per kind: the section, the key of its items, and how names compare.
_DECLARING = {
    "email account": ("accounts", "account_id"),
    "case type": ("case_types", "name"),
    "service email rule": ("rules", "name"),
    "email channel": ("channels", "name"),
}


def _same(kind: str, name: Any) -> str:
    text = " ".join(str(name).split())
    return text.lower() if kind in ("case type", "service email rule") else text


def _declared(data: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    declared: dict[tuple[str, str], str] = {}
    for kind, (section, key) in _DECLARING.items():
        items = data.get(section)
        for index, item in enumerate(items if isinstance(items, list) else []):
            if isinstance(item, dict) and item.get(key):
                declared.setdefault((kind, _same(kind, item[key])), f"{section}[{index}]")
    return declared


def _missing(
    report: ImportReport, kind: str, name: Any, path: str, problems: list[str], hint: str = ""
) -> None:
    """Say that the `kind` called `name` does not exist, or, when the file declares it, that
    it was refused and where."""
    where = report.declared.get((kind, _same(kind, name)))
    if where is not None:
        problems.append(f"{path}: the {kind} {name} is not saved: see {where}.")
    else:
        problems.append(f"{path}: there is no {kind} named {name}{hint}.")


def _import_case_types(items: Any, where: str, report: ImportReport) -> None:
    if not isinstance(items, list):
        raise ConfigError([f"{where}: must be a list of case types."])
    problems: list[str] = []
    checked = []
    names: set[str] = set()
    for index, item in enumerate(items):
        path = f"{where}[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{path}: must be a mapping with name, prefix, fields and stages.")
            continue
        for key in sorted(set(item) - CASE_TYPE_KEYS):
            problems.append(f"{path}.{key}: unknown key; use {', '.join(sorted(CASE_TYPE_KEYS))}.")
        name = str(item.get("name") or "").strip()
        if not name:
            problems.append(f"{path}.name: give the case type a name.")
        elif name.lower() in names:
            problems.append(f"{path}.name: {name!r} appears twice in the file.")
        names.add(name.lower())
        publish = item.get("publish", True)
        if not isinstance(publish, bool):
            problems.append(f"{path}.publish: must be true or false.")
        definition = {"fields": item.get("fields") or [], "stages": item.get("stages") or []}
        try:
            parsed = parse_definition(definition, check=bool(publish))
        except DefinitionError as exc:
            published = _published_as_is(name, definition)
            if published is None:
                problems.extend(f"{path}.{p.path}: {p.message}" for p in exc.problems)
                continue
            parsed = published
        if publish:
            problems.extend(
                f"{path}.{p.path}: {p.message}" for p in casetype_service.unknown_users(parsed)
            )
        problems.extend(
            f"{path}.{p.path}: {p.message}" for p in group_service.unknown_groups(parsed)
        )
        if "email_account" in item:
            sender = item["email_account"]
            if sender is not None and account_service.find_account(str(sender)) is None:
                hint = "; add it to the accounts section or create it first"
                _missing(report, "email account", sender, f"{path}.email_account", problems, hint)
        checked.append((path, item, name, parsed.to_dict(), bool(publish)))
    if problems:
        raise ConfigError(problems)
    for path, item, name, definition, publish in checked:
        report.changes.append(_apply_case_type(path, item, name, definition, publish))


def _published_as_is(name: str, definition: dict[str, Any]) -> Definition | None:
    """`definition`, read without the design checks, when it is the newest published version
    of the case type `name` as it stands (importing it changes nothing); else None. A version
    published before a check was added stays importable: an export of a working installation
    imports again."""
    case_type = casetype_service.find_case_type(name)
    if case_type is None or case_type.name.lower() != name.lower():
        return None
    latest = case_type.latest_version
    if latest is None:
        return None
    try:
        parsed = parse_definition(definition, check=False)
        stored = parse_definition(latest.definition, check=False)
    except DefinitionError:
        return None
    return parsed if parsed.to_dict() == stored.to_dict() else None


def _apply_case_type(
    path: str, item: dict[str, Any], name: str, definition: dict[str, Any], publish: bool
) -> str:
    prefix = str(item.get("prefix") or "")
    description = str(item.get("description") or "")
    case_type = casetype_service.find_case_type(name)
    if case_type is not None and case_type.name.lower() != name.lower():
        case_type = None  # found by prefix only: a different case type owns that prefix
    done = []
    try:
        if case_type is None:
            case_type = casetype_service.create_case_type(name, prefix, description)
            done.append("created")
        elif (case_type.name, case_type.prefix, case_type.description) != (
            name,
            prefix.strip().upper(),
            description.strip(),
        ):
            casetype_service.update_case_type(case_type, name, prefix, description)
            done.append("renamed")
        if case_type.draft != definition:
            casetype_service.save_draft(case_type, definition)
            if "created" not in done:
                done.append("draft updated")
        latest = case_type.latest_version
        if publish and (latest is None or latest.definition != case_type.draft):
            version = casetype_service.publish(case_type, None)
            done.append(f"published version {version.number}")
        if "email_account" in item:
            # Left out, the sending account stays as it is; null clears it.
            sender = item["email_account"]
            account = account_service.find_account(str(sender)) if sender is not None else None
            if case_type.email_account_id != (account.id if account else None):
                try:
                    compose_service.set_sending_account(case_type, account)
                except compose_service.ComposeError as exc:
                    raise ConfigError([f"{path}.email_account: {exc}"]) from None
                if "created" not in done:
                    done.append("sending account set" if account else "sending account cleared")
    except casetype_service.CaseTypeError as exc:
        raise ConfigError([f"{path}: {exc}"]) from None
    return f"case type {name}: {', '.join(done) or 'unchanged'}"


def _import_groups(items: Any, where: str, report: ImportReport) -> None:
    if not isinstance(items, list):
        raise ConfigError([f"{where}: must be a list of groups."])
    problems: list[str] = []
    checked: list[tuple[str, list[str]]] = []
    names: set[str] = set()
    for index, item in enumerate(items):
        path = f"{where}[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{path}: must be a mapping with name and members.")
            continue
        for key in sorted(set(item) - GROUP_KEYS):
            problems.append(f"{path}.{key}: unknown key; use {', '.join(sorted(GROUP_KEYS))}.")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{path}.name: give the group a name.")
            continue
        name = " ".join(name.split())
        if len(name) > group_service.MAX_NAME:
            problems.append(f"{path}.name: use at most {group_service.MAX_NAME} characters.")
        elif name.lower() in names:
            problems.append(f"{path}.name: {name!r} appears twice in the file.")
        names.add(name.lower())
        members = item.get("members") or []
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            problems.append(f"{path}.members: must be a list of user email addresses.")
            continue
        emails = [m.strip().lower() for m in members if m.strip()]
        users = {u.email: u for u in db.session.scalars(select(User).where(User.email.in_(emails)))}
        for email in emails:
            user = users.get(email)
            if user is None:
                problems.append(f"{path}.members: there is no user {email}.")
            elif user.role not in group_service.MEMBER_ROLES:
                problems.append(
                    f"{path}.members: {email} is a {user.role}; only workers and admins work cases."
                )
        checked.append((name, emails))
    if problems:
        raise ConfigError(problems)
    for name, emails in checked:
        group = group_service.find_group(name)
        done = []
        if group is None:
            group = group_service.create_group(name)
            done.append("created")
        elif group.name != name:
            group_service.rename_group(group, name)
            done.append("renamed")
        if sorted(u.email for u in group.members) != sorted(set(emails)):
            group_service.set_members(group, emails)
            if "created" not in done or emails:
                done.append("members set")
        report.changes.append(f"group {name}: {', '.join(done) or 'unchanged'}")


# -- values read from the file ---------------------------------------------------------------


def _text(value: Any, path: str, problems: list[str], limit: int | None = None) -> str | None:
    """A text value (numbers are taken as their text: tls_min 1.2, nothing as ""); None after
    a problem."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        problems.append(f"{path}: must be text.")
        return None
    text = str(value).strip()
    if limit is not None and len(text) > limit:
        problems.append(f"{path}: use at most {limit:,} characters.")
        return None
    return text


def _flag(value: Any, path: str, problems: list[str]) -> bool | None:
    if not isinstance(value, bool):
        problems.append(f"{path}: must be true or false.")
        return None
    return value


def _whole(value: Any, path: str, problems: list[str], optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{path}: must be a whole number.")
        return None
    return value


def _item_name(item: dict[str, Any], path: str, what: str, problems: list[str]) -> str | None:
    name = _text(item.get("name"), f"{path}.name", problems)
    if name == "":
        problems.append(f"{path}.name: give the {what} a name.")
    return name or None


def _unknown_keys(item: dict[str, Any], known: Any, path: str, problems: list[str]) -> None:
    for key in sorted(set(item) - set(known), key=str):
        close = difflib.get_close_matches(str(key), list(known), n=1)
        if close:
            problems.append(f"{path}.{key}: unknown key; did you mean {close[0]}?")
        elif len(known) <= 15:
            problems.append(f"{path}.{key}: unknown key; use {', '.join(sorted(known))}.")
        else:
            problems.append(f"{path}.{key}: unknown key; docs/configuration.md lists the keys.")


def _items(items: Any, where: str, what: str) -> list[tuple[str, Any]]:
    if not isinstance(items, list):
        raise ConfigError([f"{where}: must be a list of {what}."])
    return [(f"{where}[{index}]", item) for index, item in enumerate(items)]


NameOf = Callable[[dict[str, Any], str, list[str]], str | None]


def _named_items(
    items: Any,
    where: str,
    what: str,
    shape: str,
    known: Collection[str],
    name_of: NameOf,
    id_key: str = "name",
    same: Callable[[str], str] = str,
) -> Iterator[tuple[str, dict[str, Any], str, list[str]]]:
    """The section's items that are mappings with a name, as (path, item, name, problems).

    The caller adds the item's problems to the list it is given, and leaves the item when there
    are any. Unknown keys and a name used twice (compared by `same`) are problems already.
    Raises ConfigError with every problem of the section once all items are read.
    """
    problems: list[str] = []
    seen: set[str] = set()
    for path, item in _items(items, where, what):
        if not isinstance(item, dict):
            problems.append(f"{path}: must be a mapping with {shape}.")
            continue
        own: list[str] = []
        _unknown_keys(item, known, path, own)
        name = name_of(item, path, own)
        if name is None:
            problems.extend(own)
            continue
        if same(name) in seen:
            own.append(f"{path}.{id_key}: {name!r} appears twice in the file.")
        seen.add(same(name))
        yield path, item, name, own
        problems.extend(own)
    if problems:
        raise ConfigError(problems)


def _field_problems(
    path: str, errors: Mapping[str, str], key_of: Callable[[str], str], refused: Collection[str]
) -> list[str]:
    """A service's refusals, per form field, as problems at the file's keys; keys the file
    already had a problem with are left out."""
    by_key = {key_of(field): text for field, text in errors.items()}
    return [f"{path}.{key}: {text}" for key, text in by_key.items() if key not in refused]


def _outcome(what: str, before: tuple[Any, ...] | None, after: tuple[Any, ...]) -> str:
    """The report line for an item saved with the state `after`, `before` None when new."""
    done = "created" if before is None else "updated" if after != before else "unchanged"
    return f"{what}: {done}"


def _snapshot(row: Any, names: Any) -> tuple[Any, ...]:
    return tuple(getattr(row, name) for name in names)


def _column_limit(model: type[Any], attribute: str) -> int | None:
    return getattr(model.__table__.columns[attribute].type, "length", None)


# -- email accounts ------------------------------------------------------------------------------

TEXT, PORT, SECONDS, FLAG, OVERRIDES, TRUSTSTORE, SIGNING, PROFILE = (
    "text", "port", "seconds", "flag", "overrides", "truststore", "signing", "profile",
)  # fmt: skip
# Every account key in the order exported. Keystores and OAuth profiles are named; the
# attribute is the key with "_id" appended.
ACCOUNT_KEYS: dict[str, str] = {
    "name": TEXT,
    "description": TEXT,
    "provider": TEXT,
    "sender_protocol": TEXT,
    "smtp_email": TEXT,
    "smtp_display_name": TEXT,
    "smtp_user_id": TEXT,
    "smtp_reply_to": TEXT,
    "smtp_host": TEXT,
    "smtp_port": PORT,
    "smtp_security": TEXT,
    "smtp_tls_min": TEXT,
    "smtp_truststore": TRUSTSTORE,
    "smtp_auth": TEXT,
    "sender_auth_profile": PROFILE,
    "signing_keystore": SIGNING,
    "signing_alias": TEXT,
    "smtp_advanced": OVERRIDES,
    "graph_sender_upn": TEXT,
    "graph_sender_reply_to": TEXT,
    "graph_sender_timeout": SECONDS,
    "receiver_protocol": TEXT,
    "receiver_use_sender_credentials": FLAG,
    "receiver_auth": TEXT,
    "receiver_auth_profile": PROFILE,
    "receiver_user_id": TEXT,
    "receiver_host": TEXT,
    "receiver_port": PORT,
    "receiver_security": TEXT,
    "receiver_tls_min": TEXT,
    "receiver_truststore": TRUSTSTORE,
    "receiver_advanced": OVERRIDES,
    "graph_receiver_upn": TEXT,
    "require_authenticated_replies": FLAG,
    "trusted_authserv_ids": TEXT,
}
_REFERENCES = (TRUSTSTORE, SIGNING, PROFILE)
# Read on import, never written on export.
SECRET_KEYS = ("smtp_password", "receiver_password")
_ADDRESSES = ("smtp_email", "smtp_reply_to", "graph_sender_reply_to")
_OVERRIDE_KEYS = {
    "smtp_advanced": advanced.SENDER_KEYS,
    "receiver_advanced": advanced.RECEIVER_KEYS,
}


def _attribute(key: str) -> str:
    return f"{key}_id" if ACCOUNT_KEYS[key] in _REFERENCES else key


def _export_account(account: EmailAccount) -> dict[str, Any]:
    data: dict[str, Any] = {"account_id": account.account_id}
    for key, kind in ACCOUNT_KEYS.items():
        value = getattr(account, key)
        if kind in _REFERENCES:
            value = value.name if value is not None else None
        elif kind == OVERRIDES:
            value = dict(sorted((value or {}).items()))
        data[key] = value
    return data


def _named(model: type[Any], name: Any) -> Any:
    return db.session.scalar(select(model).where(model.name == str(name)))


def _account_reference(key: str, name: Any, path: str, problems: list[str]) -> int | None:
    """The id of the keystore or OAuth profile called `name`; None (and a problem) if none."""
    if name is None or name == "":
        return None
    kind = ACCOUNT_KEYS[key]
    if kind == PROFILE:
        profile = _named(AuthProfile, name)
        if profile is None:
            problems.append(
                f"{path}: there is no OAuth 2.0 profile named {name}; create it under "
                "Admin → OAuth 2.0 profiles first."
            )
            return None
        return int(profile.id)
    keystore = _named(Keystore, name)
    wanted = KeystoreKind.TRUSTSTORE if kind == TRUSTSTORE else KeystoreKind.SIGNING
    if keystore is None:
        problems.append(
            f"{path}: there is no keystore named {name}; upload it under Admin → Keystores first."
        )
        return None
    if keystore.kind != wanted:
        noun = "truststore" if wanted == KeystoreKind.TRUSTSTORE else "signing keystore"
        problems.append(f"{path}: the keystore {name} is not a {noun}.")
        return None
    return int(keystore.id)


def _account_value(key: str, value: Any, path: str, problems: list[str]) -> Any:
    kind = ACCOUNT_KEYS[key]
    if kind in _REFERENCES:
        return _account_reference(key, value, path, problems)
    if kind == FLAG:
        return _flag(value, path, problems)
    if kind == PORT:
        return _whole(value, path, problems, optional=True)
    if kind == SECONDS:
        seconds = _whole(value, path, problems, optional=True)
        if seconds is not None and not 1 <= seconds <= 600:
            problems.append(f"{path}: from 1 to 600 seconds.")
        return seconds
    if kind == OVERRIDES:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(v, str | int | float) and not isinstance(v, bool) for v in value.values()
        ):
            problems.append(f"{path}: must be a mapping of setting names to values.")
            return None
        try:
            return advanced.parse_overrides(
                advanced.format_overrides({str(k): str(v) for k, v in value.items()}),
                _OVERRIDE_KEYS[key],
            )
        except advanced.AdvancedError as exc:
            problems.append(f"{path}: {exc}")
            return None
    text = _text(value, path, problems, _column_limit(EmailAccount, key))
    if text and key in _ADDRESSES:
        try:
            validate_email(text, check_deliverability=False)
        except EmailNotValidError:
            problems.append(f"{path}: {text!r} is not an email address.")
            return None
    return text


def _stored_secret(token: str | None, given: str) -> bool:
    """Whether the stored (encrypted) secret is `given` already."""
    if not token:
        return False
    try:
        return get_secretbox().decrypt(token) == given
    except SecretError:
        return False


def _account_id(item: dict[str, Any], path: str, problems: list[str]) -> str | None:
    account_id = str(item.get("account_id") or "").strip()
    if not account_id:
        problems.append(f"{path}.account_id: give the account an ID.")
    return account_id or None


def _import_accounts(items: Any, where: str, report: ImportReport) -> None:
    for path, item, account_id, own in _named_items(
        items,
        where,
        "email accounts",
        "account_id, name and the settings",
        {"account_id", *ACCOUNT_KEYS, *SECRET_KEYS},
        _account_id,
        id_key="account_id",
    ):
        account = account_service.find_account(account_id)
        values: dict[str, Any] = {}
        failed: set[str] = set()
        for key in ACCOUNT_KEYS:
            if key not in item:
                continue
            before = len(own)
            value = _account_value(key, item[key], f"{path}.{key}", own)
            if len(own) > before:
                failed.add(key)
            else:
                values[_attribute(key)] = value
        name = values.get("name", account.name if account is not None else "")
        if not name and "name" not in failed:
            own.append(f"{path}.name: give the account a name.")
        passwords: dict[str, str | None] = {}
        for key in SECRET_KEYS:
            secret = item.get(key)
            if secret is not None and not isinstance(secret, str):
                own.append(f"{path}.{key}: must be text, for example ${{SUPPORT_PASSWORD}}.")
                failed.add(key)
                secret = None
            # An empty or missing password keeps the stored one.
            passwords[key] = secret or None
        errors = account_service.account_errors(account, account_id, values, passwords)
        own.extend(_field_problems(path, errors, _key_of, failed))
        if own:
            continue
        # Saved even when an earlier item was refused, to find every problem in one run: the
        # caller rolls everything back on ConfigError.
        report.changes.append(_apply_account(account, account_id, values, passwords))


def _key_of(field: str) -> str:
    """The file's key for an account form field (keystores and profiles are named)."""
    named = field.removesuffix("_id")
    return named if ACCOUNT_KEYS.get(named) in _REFERENCES else field


def _apply_account(
    account: EmailAccount | None,
    account_id: str,
    values: dict[str, Any],
    passwords: dict[str, str | None],
) -> str:
    columns = [
        *(_attribute(k) for k in ACCOUNT_KEYS),
        "smtp_password_encrypted",
        "receiver_password_encrypted",
    ]
    before = _snapshot(account, columns) if account is not None else None
    if account is not None:
        # The same password again is no change: keep the stored one as it is.
        for key in SECRET_KEYS:
            given = passwords.get(key)
            if given and _stored_secret(getattr(account, f"{key}_encrypted"), given):
                passwords[key] = None
    saved = account_service.save_account(account, account_id, values, passwords)
    return _outcome(f"account {account_id}", before, _snapshot(saved, columns))


# -- service email rules ------------------------------------------------------------------------

RULE_KEYS = (
    "name",
    "action",
    "case_type",
    "field_mappings",
    "stage_action",
    "resolved_policy",
    "send_ack",
    "ack_subject",
    "ack_body",
    "max_attachment_bytes",
    "max_attachments",
)
# The rule's columns, in the file's order: the case type is named in the file.
_RULE_COLUMNS = tuple("case_type_id" if key == "case_type" else key for key in RULE_KEYS)
_RULE_FIELDS = {"case_type_id": "case_type", "mappings": "field_mappings"}
_MAPPING_KEYS = ("field", "source", "value")


def _export_rule(rule: ServiceEmailRule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "action": rule.action,
        "case_type": rule.case_type.name if rule.case_type is not None else None,
        "field_mappings": [{k: m.get(k, "") for k in _MAPPING_KEYS} for m in rule.field_mappings],
        "stage_action": rule.stage_action,
        "resolved_policy": rule.resolved_policy,
        "send_ack": rule.send_ack,
        "ack_subject": rule.ack_subject,
        "ack_body": rule.ack_body,
        "max_attachment_bytes": rule.max_attachment_bytes,
        "max_attachments": rule.max_attachments,
    }


def _case_type_named(name: str) -> CaseType | None:
    return db.session.scalar(select(CaseType).where(func.lower(CaseType.name) == name.lower()))


def _rule_named(name: str) -> ServiceEmailRule | None:
    wanted = " ".join(name.split()).lower()
    return db.session.scalar(
        select(ServiceEmailRule).where(func.lower(ServiceEmailRule.name) == wanted)
    )


def _rule_data(rule: ServiceEmailRule | None) -> rule_service.RuleData:
    if rule is None:
        return rule_service.RuleData(name="", action="create_case", case_type_id=None)
    return rule_service.RuleData(
        name=rule.name,
        action=rule.action,
        case_type_id=rule.case_type_id,
        mappings=[dict(m) for m in rule.field_mappings or []],
        stage_action=rule.stage_action,
        resolved_policy=rule.resolved_policy,
        send_ack=rule.send_ack,
        ack_subject=rule.ack_subject,
        ack_body=rule.ack_body,
        max_attachment_bytes=rule.max_attachment_bytes,
        max_attachments=rule.max_attachments,
    )


def _mappings(value: Any, path: str, problems: list[str]) -> list[dict[str, str]] | None:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{path}: must be a list of mappings with field, source and value.")
        return None
    mappings = []
    for index, mapping in enumerate(value):
        where = f"{path}[{index}]"
        if not isinstance(mapping, dict) or not all(
            isinstance(mapping.get(k), str) and mapping.get(k) for k in _MAPPING_KEYS
        ):
            problems.append(f"{where}: give field, source and value, each as text.")
            continue
        _unknown_keys(mapping, _MAPPING_KEYS, where, problems)
        mappings.append({k: str(mapping[k]) for k in _MAPPING_KEYS})
    return mappings


def _rule_values(
    item: dict[str, Any],
    data: rule_service.RuleData,
    path: str,
    problems: list[str],
    report: ImportReport,
) -> set[str]:
    """Copy the file's values onto `data`; returns the keys that were refused."""
    failed: set[str] = set()
    for key, value in item.items():
        before = len(problems)
        where = f"{path}.{key}"
        attribute, read = key, value
        if key in ("name", "action", "stage_action", "resolved_policy", "ack_subject", "ack_body"):
            read = _text(value, where, problems)
        elif key == "case_type":
            case_type = _case_type_named(str(value)) if value else None
            if value and case_type is None:
                hint = "; add it to the case_types section or create it first"
                _missing(report, "case type", value, where, problems, hint)
            attribute, read = "case_type_id", case_type.id if case_type else None
        elif key == "field_mappings":
            attribute, read = "mappings", _mappings(value, where, problems)
        elif key == "send_ack":
            read = _flag(value, where, problems)
        elif key in ("max_attachment_bytes", "max_attachments"):
            read = _whole(value, where, problems)
        else:
            continue
        if len(problems) > before:
            failed.add(key)
        else:
            setattr(data, attribute, read)
    if "field_mappings" not in failed and "case_type" not in failed:
        definition = rule_service.definition_for(
            db.session.get(CaseType, data.case_type_id) if data.case_type_id else None
        )
        if definition is not None:
            for index, mapping in enumerate(data.mappings):
                problem = rule_service.check_mapping(mapping, definition)
                if problem:
                    problems.append(f"{path}.field_mappings[{index}]: {problem}")
                    failed.add("field_mappings")
    return failed


def _rule_name(item: dict[str, Any], path: str, problems: list[str]) -> str | None:
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{path}.name: give the rule a name.")
        return None
    return name


def _import_rules(items: Any, where: str, report: ImportReport) -> None:
    for path, item, name, own in _named_items(
        items,
        where,
        "service email rules",
        "name, action and case_type",
        RULE_KEYS,
        _rule_name,
        same=lambda name: " ".join(name.split()).lower(),
    ):
        rule = _rule_named(name)
        data = _rule_data(rule)
        failed = _rule_values(item, data, path, own, report)
        if own:
            continue
        before = _snapshot(rule, _RULE_COLUMNS) if rule is not None else None
        try:
            saved = rule_service.save_rule(rule, data)
        except rule_service.RuleError as exc:
            own.extend(
                _field_problems(path, exc.field_errors, lambda f: _RULE_FIELDS.get(f, f), failed)
            )
            continue
        report.changes.append(
            _outcome(f"rule {saved.name}", before, _snapshot(saved, _RULE_COLUMNS))
        )


# -- email channels -----------------------------------------------------------------------------

CHANNEL_KEYS = ("name", "mode", "default", "default_rule", "default_case_type", "routes")
ROUTE_KEYS = ("conditions", "target", "rule", "case_type")
_ROUTE_FIELDS = {"target_rule": "rule", "target_case_type": "case_type"}


def _export_target(
    kind: str, rule: ServiceEmailRule | None, case_type: CaseType | None
) -> dict[str, Any]:
    """The rule or case type a target names ({} for ignore and quarantine)."""
    if kind == "rule" and rule is not None:
        return {"rule": rule.name}
    if kind == "case_type" and case_type is not None:
        return {"case_type": case_type.name}
    return {}


def _export_channel(channel: EmailChannel) -> dict[str, Any]:
    default = _export_target(channel.default_kind, channel.default_rule, channel.default_case_type)
    return {
        "name": channel.name,
        "mode": channel.mode,
        "default": channel.default_kind,
        "default_rule": default.get("rule"),
        "default_case_type": default.get("case_type"),
        "routes": [
            {
                "conditions": [channel_service.condition_line(c) for c in route.conditions],
                "target": route.target_kind,
                **_export_target(route.target_kind, route.rule, route.case_type),
            }
            for route in channel.routes
        ],
    }


def _target_id(
    kind: Any, rule: Any, case_type: Any, path: str, problems: list[str], report: ImportReport
) -> int | None:
    """The id of the named rule or case type the target kind needs; None with a problem."""
    if kind == "rule":
        found = _rule_named(str(rule)) if rule else None
        if not rule:
            problems.append(f"{path}: name the service email rule it leads to.")
        elif found is None:
            _missing(report, "service email rule", rule, path, problems)
        return found.id if found else None
    if kind == "case_type":
        case = _case_type_named(str(case_type)) if case_type else None
        if not case_type:
            problems.append(f"{path}: name the case type it leads to.")
        elif case is None:
            _missing(report, "case type", case_type, path, problems)
        return case.id if case else None
    return None


def _routes(
    value: Any, path: str, problems: list[str], report: ImportReport
) -> list[tuple[str, Any, Any]] | None:
    """The routes of the file as (where, conditions, (kind, target id)), checked for shape."""
    if not isinstance(value, list):
        problems.append(f"{path}: must be a list of routes with conditions and a target.")
        return None
    routes = []
    for index, route in enumerate(value):
        where = f"{path}[{index}]"
        if not isinstance(route, dict):
            problems.append(f"{where}: must be a mapping with conditions and a target.")
            continue
        _unknown_keys(route, ROUTE_KEYS, where, problems)
        lines = route.get("conditions")
        if isinstance(lines, str):
            lines = [lines]
        if not isinstance(lines, list) or not lines:
            problems.append(f"{where}.conditions: give one or more conditions such as "
                            "“subject contains invoice”.")  # fmt: skip
            continue
        conditions = []
        for number, line in enumerate(lines):
            try:
                conditions.append(channel_service.parse_condition(str(line)))
            except channel_service.ChannelError as exc:
                problems.append(f"{where}.conditions[{number}]: {exc}")
        kind = route.get("target")
        key = "rule" if kind == "rule" else "case_type"
        target_id = _target_id(
            kind, route.get("rule"), route.get("case_type"), f"{where}.{key}", problems, report
        )
        routes.append((where, conditions, (kind, target_id)))
    return routes


def _import_channels(items: Any, where: str, report: ImportReport) -> None:
    for path, item, name, own in _named_items(
        items,
        where,
        "email channels",
        "name, mode, default and routes",
        CHANNEL_KEYS,
        lambda item, path, problems: _item_name(item, path, "channel", problems),
    ):
        channel = db.session.scalar(select(EmailChannel).where(EmailChannel.name == name))
        mode = item.get("mode", channel.mode if channel else "first")
        kind = item.get("default", channel.default_kind if channel else "quarantine")
        default_key = "default_rule" if kind == "rule" else "default_case_type"
        if channel is not None and "default" not in item and default_key not in item:
            default_id = channel.default_rule_id or channel.default_case_type_id
        else:
            default_id = _target_id(
                kind,
                item.get("default_rule"),
                item.get("default_case_type"),
                f"{path}.{default_key}",
                own,
                report,
            )
        routes = (
            _routes(item["routes"], f"{path}.routes", own, report) if "routes" in item else None
        )
        if own:
            continue
        before = _channel_state(channel) if channel is not None else None
        try:
            saved = channel_service.save_channel(
                channel, name=name, mode=str(mode), default_kind=str(kind), default_id=default_id
            )
        except channel_service.ChannelError as exc:
            own.extend(f"{path}.{k}: {text}" for k, text in exc.field_errors.items())
            continue
        if routes is not None:
            own.extend(_set_routes(saved, routes))
        report.changes.append(_outcome(f"channel {saved.name}", before, _channel_state(saved)))


def _channel_state(channel: EmailChannel) -> tuple[Any, ...]:
    routes = tuple(
        (r.position, repr(r.conditions), r.target_kind, r.rule_id, r.case_type_id)
        for r in sorted(channel.routes, key=lambda r: r.position)
    )
    columns = ("name", "mode", "default_kind", "default_rule_id", "default_case_type_id")
    return (*_snapshot(channel, columns), routes)


def _set_routes(channel: EmailChannel, routes: list[tuple[str, Any, Any]]) -> list[str]:
    """Make the channel's routes those of the file, editing them in place; returns problems."""
    problems: list[str] = []
    existing = sorted(channel.routes, key=lambda r: r.position)
    for index, (where, conditions, (kind, target_id)) in enumerate(routes):
        try:
            if index < len(existing):
                channel_service.update_route(existing[index], conditions, str(kind), target_id)
            else:
                channel_service.add_route(channel, conditions, str(kind), target_id)
        except channel_service.ChannelError as exc:
            fields = exc.field_errors or {"target": str(exc)}
            problems.extend(
                f"{where}.{_ROUTE_FIELDS.get(k, k)}: {text}" for k, text in fields.items()
            )
    for route in existing[len(routes) :]:
        channel_service.remove_route(route)
    return problems


# -- email listeners ----------------------------------------------------------------------------

_LISTENER_FIELDS = {"account_id": "account", "rule_id": "rule", "channel_id": "channel"}
# The listener's fields, references named as in the file, in the order exported.
LISTENER_KEYS = tuple(_LISTENER_FIELDS.get(f, f) for f in listener_service.FIELDS)
_LISTENER_FLAGS = listener_service.FLAGS
_LISTENER_NUMBERS = ("poll_interval_seconds", "max_batch", "max_message_bytes")


def _export_listener(listener: EmailListener) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key in LISTENER_KEYS:
        if key == "account":
            data[key] = listener.account.account_id
        elif key == "rule":
            data[key] = listener.rule.name if listener.rule is not None else None
        elif key == "channel":
            data[key] = listener.channel.name if listener.channel is not None else None
        else:
            data[key] = getattr(listener, key)
    return data


def _listener_values(
    item: dict[str, Any],
    values: dict[str, Any],
    path: str,
    problems: list[str],
    report: ImportReport,
) -> set[str]:
    """Copy the file's values onto `values` (service field names); returns refused keys."""
    failed: set[str] = set()
    for key, value in item.items():
        before = len(problems)
        where = f"{path}.{key}"
        if key == "account":
            account = account_service.find_account(str(value)) if value else None
            if account is None:
                hint = "; add it to the accounts section or create it first"
                _missing(report, "email account", value, where, problems, hint)
            values["account_id"] = account.id if account else None
        elif key == "rule":
            rule = _rule_named(str(value)) if value else None
            if value and rule is None:
                _missing(report, "service email rule", value, where, problems)
            values["rule_id"] = rule.id if rule else None
        elif key == "channel":
            channel = None
            if value:
                channel = db.session.scalar(
                    select(EmailChannel).where(EmailChannel.name == str(value))
                )
                if channel is None:
                    _missing(report, "email channel", value, where, problems)
            values["channel_id"] = channel.id if channel else None
        elif key in _LISTENER_FLAGS:
            values[key] = _flag(value, where, problems)
        elif key in _LISTENER_NUMBERS:
            values[key] = value
        elif key in LISTENER_KEYS:
            values[key] = _text(value, where, problems)
        if len(problems) > before:
            failed.add(key)
    return failed


def _import_listeners(items: Any, where: str, report: ImportReport) -> None:
    for path, item, name, own in _named_items(
        items,
        where,
        "email listeners",
        "name, account and folder",
        LISTENER_KEYS,
        lambda item, path, problems: _item_name(item, path, "listener", problems),
    ):
        listener = db.session.scalar(select(EmailListener).where(EmailListener.name == name))
        current = listener if listener is not None else listener_service.new_listener()
        values = listener_service.listener_values(current)
        failed = _listener_values(item, values, path, own, report)
        errors = listener_service.listener_errors(listener, values)
        own.extend(_field_problems(path, errors, lambda f: _LISTENER_FIELDS.get(f, f), failed))
        if own:
            continue
        columns = listener_service.FIELDS
        before = _snapshot(listener, columns) if listener is not None else None
        saved = listener_service.save_listener(listener, values)
        report.changes.append(_outcome(f"listener {saved.name}", before, _snapshot(saved, columns)))


Importer = Callable[[Any, str, ImportReport], None]

# Sections of the configuration file, in the order they are imported, each after what it
# names: case type stages route to groups, case types send from accounts, rules open cases of
# case types, channels route to rules and case types, listeners use all of these.
SECTIONS: dict[str, Importer] = {
    "groups": _import_groups,
    "accounts": _import_accounts,
    "case_types": _import_case_types,
    "rules": _import_rules,
    "channels": _import_channels,
    "listeners": _import_listeners,
}
