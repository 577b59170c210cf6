"""Configuration as code: export work groups and case types to YAML and import them back,
idempotently."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from sqlalchemy import select

from webapp.casetypes.definition import DefinitionError, parse_definition
from webapp.extensions import db
from webapp.models import CaseType, User
from webapp.services import casetypes as casetype_service
from webapp.services import groups as group_service

ENV_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
CASE_TYPE_KEYS = {"name", "prefix", "description", "publish", "fields", "stages"}
GROUP_KEYS = {"name", "members"}


class ConfigError(ValueError):
    """The configuration cannot be imported; every message names the file and the key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class ImportReport:
    changes: list[str] = field(default_factory=list)

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
        case_types.append(
            {
                "name": case_type.name,
                "prefix": case_type.prefix,
                "description": case_type.description,
                "publish": latest is not None and latest.definition == draft,
                **draft,
            }
        )
    return {"groups": groups, "case_types": case_types}


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
    report = ImportReport()
    for key, importer in SECTIONS.items():
        if key in data:
            importer(data[key], f"{source}: {key}", report)
    return report


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
            problems.extend(f"{path}.{p.path}: {p.message}" for p in exc.problems)
            continue
        if publish:
            problems.extend(
                f"{path}.{p.path}: {p.message}" for p in casetype_service.unknown_users(parsed)
            )
        problems.extend(
            f"{path}.{p.path}: {p.message}" for p in group_service.unknown_groups(parsed)
        )
        checked.append((path, item, name, parsed.to_dict(), bool(publish)))
    if problems:
        raise ConfigError(problems)
    for path, item, name, definition, publish in checked:
        report.changes.append(_apply_case_type(path, item, name, definition, publish))


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


Importer = Callable[[Any, str, ImportReport], None]

# Sections of the configuration file, in the order they are imported: groups first, because
# case type stages route to them.
SECTIONS: dict[str, Importer] = {"groups": _import_groups, "case_types": _import_case_types}
