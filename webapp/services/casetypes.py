"""Case types: create, edit the draft definition, publish immutable versions."""

from __future__ import annotations

import copy
import functools
import json
import re
import weakref
from typing import Any

from sqlalchemy import func, select, update

from webapp.casetypes.definition import (
    APPROVAL,
    RESOLUTION,
    WORK,
    Definition,
    DefinitionError,
    Problem,
    parse_definition,
    slugify,
)
from webapp.casetypes.starters import STARTERS
from webapp.extensions import db
from webapp.models import CaseCounter, CaseType, CaseTypeVersion, User
from webapp.models.types import utcnow
from webapp.services.groups import unknown_groups

PREFIX_RE = re.compile(r"^[A-Z][A-Z0-9]{0,9}$")
FIRST_CASE_NUMBER = 1001


class CaseTypeError(ValueError):
    """A case type change was refused; the message (and `problems`) say what to change."""

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


def blank_definition() -> dict[str, Any]:
    """What a new case type starts with: one work stage and a resolution, ready to edit."""
    return {
        "fields": [],
        "stages": [
            {
                "key": "intake",
                "name": "Intake",
                "kind": WORK,
                "actions": [{"name": "Complete", "to": "completed"}],
            },
            {
                "key": "completed",
                "name": "Resolved-Completed",
                "kind": RESOLUTION,
                "resolution": "completed",
            },
        ],
    }


def _check_identity(name: str, prefix: str, case_type: CaseType | None) -> tuple[str, str]:
    name = name.strip()
    prefix = prefix.strip().upper()
    if not name or len(name) > 100:
        raise CaseTypeError("Give the case type a name of at most 100 characters.")
    if not PREFIX_RE.match(prefix):
        raise CaseTypeError(
            "The id prefix must be 1 to 10 capital letters or digits, starting with a letter "
            "(cases are numbered PREFIX-1001)."
        )
    others = select(CaseType).where(CaseType.id != (case_type.id if case_type else -1))
    if db.session.scalar(others.where(func.lower(CaseType.name) == name.lower())):
        raise CaseTypeError(f"A case type named {name!r} already exists; choose another name.")
    if db.session.scalar(others.where(CaseType.prefix == prefix)):
        raise CaseTypeError(f"The prefix {prefix} is taken by another case type.")
    return name, prefix


def create_case_type(name: str, prefix: str, description: str = "", starter: str = "") -> CaseType:
    """A new case type with a draft from a starter template (or a blank one).

    Raises CaseTypeError for a taken name or prefix, or an unknown starter.
    """
    name, prefix = _check_identity(name, prefix, None)
    if starter and starter not in STARTERS:
        raise CaseTypeError(f"There is no starter template {starter!r}.")
    source = copy.deepcopy(STARTERS[starter].definition) if starter else blank_definition()
    draft = parse_definition(source, check=False).to_dict()
    case_type = CaseType(name=name, prefix=prefix, description=description.strip(), draft=draft)
    db.session.add(case_type)
    db.session.flush()
    db.session.add(CaseCounter(case_type_id=case_type.id, next_number=FIRST_CASE_NUMBER))
    db.session.flush()
    return case_type


def update_case_type(case_type: CaseType, name: str, prefix: str, description: str) -> None:
    """Rename; raises CaseTypeError for a taken name or prefix."""
    case_type.name, case_type.prefix = _check_identity(name, prefix, case_type)
    case_type.description = description.strip()
    db.session.flush()


def draft_definition(case_type: CaseType) -> Definition:
    """The draft as typed objects, with its design problems in `.problems`."""
    return parse_definition(case_type.draft, check=False)


def save_draft(case_type: CaseType, draft: dict[str, Any]) -> Definition:
    """Replace the draft; raises CaseTypeError when its shape is wrong (design problems are
    allowed in a draft and reported by `draft_definition`)."""
    try:
        definition = parse_definition(draft, check=False)
    except DefinitionError as exc:
        raise CaseTypeError(str(exc), exc.problems) from None
    # Store the normalised form so that keys and defaults are always present.
    case_type.draft = definition.to_dict()
    db.session.flush()
    return definition


def _draft_copy(case_type: CaseType) -> dict[str, Any]:
    return copy.deepcopy(draft_definition(case_type).to_dict())


def _stage_index(draft: dict[str, Any], key: str) -> int:
    for index, stage in enumerate(draft["stages"]):
        if stage["key"] == key:
            return index
    raise CaseTypeError("That stage is no longer in the draft; reload the page.")


def add_field(case_type: CaseType, field: dict[str, Any]) -> None:
    """Append a field; raises CaseTypeError for a bad or duplicate name."""
    draft = _draft_copy(case_type)
    name = str(field.get("name", ""))
    if any(f["name"] == name for f in draft["fields"]):
        raise CaseTypeError(f"There is already a field named {name!r}.")
    draft["fields"].append(field)
    _save_checked(case_type, draft)


def update_field(case_type: CaseType, name: str, field: dict[str, Any]) -> None:
    """Change a field (its name stays); raises CaseTypeError."""
    draft = _draft_copy(case_type)
    for index, existing in enumerate(draft["fields"]):
        if existing["name"] == name:
            draft["fields"][index] = {**field, "name": name}
            _save_checked(case_type, draft)
            return
    raise CaseTypeError("That field is no longer in the draft; reload the page.")


def remove_field(case_type: CaseType, name: str) -> None:
    draft = _draft_copy(case_type)
    draft["fields"] = [f for f in draft["fields"] if f["name"] != name]
    save_draft(case_type, draft)


def add_stage(case_type: CaseType, name: str, kind: str) -> str:
    """Add a stage before the resolution stages (a resolution at the end); returns its key."""
    draft = _draft_copy(case_type)
    name = name.strip()
    if not name:
        raise CaseTypeError("Give the stage a name.")
    if any(s["name"].lower() == name.lower() for s in draft["stages"]):
        raise CaseTypeError(f"There is already a stage named {name!r}.")
    base = slugify(name) or "stage"
    if not base[0].isalpha():
        base = f"s_{base}"
    key = base[:36]
    taken = {s["key"] for s in draft["stages"]}
    number = 2
    while key in taken:
        key = f"{base[:36]}_{number}"
        number += 1
    stage: dict[str, Any] = {"key": key, "name": name, "kind": kind}
    if kind == WORK:
        stage["actions"] = [{"name": "Done", "to": ""}]
    elif kind == APPROVAL:
        stage.update(approver_source="addresses", approvers=[], approval_mode="any")
    elif kind == RESOLUTION:
        stage["resolution"] = "completed"
    else:
        raise CaseTypeError("Pick a stage kind: work, approval or resolution.")
    if kind == RESOLUTION:
        draft["stages"].append(stage)
    else:
        position = next(
            (i for i, s in enumerate(draft["stages"]) if s["kind"] == RESOLUTION),
            len(draft["stages"]),
        )
        draft["stages"].insert(position, stage)
    save_draft(case_type, draft)
    return key


def update_stage(case_type: CaseType, key: str, values: dict[str, Any]) -> None:
    """Change a stage's settings (its key and kind stay); raises CaseTypeError."""
    draft = _draft_copy(case_type)
    index = _stage_index(draft, key)
    name = str(values.get("name", "")).strip()
    if any(s["name"].lower() == name.lower() for i, s in enumerate(draft["stages"]) if i != index):
        raise CaseTypeError(f"There is already a stage named {name!r}.")
    draft["stages"][index] = {**values, "key": key, "kind": draft["stages"][index]["kind"]}
    _save_checked(case_type, draft)
    missing = [
        p
        for p in unknown_groups(draft_definition(case_type))
        if p.path.startswith(f"stages[{index}].")
    ]
    if missing:
        raise CaseTypeError(_sentence(missing), missing)


def remove_stage(case_type: CaseType, key: str) -> None:
    """Remove a stage; actions that led to it are pointed at the next stage instead."""
    draft = _draft_copy(case_type)
    index = _stage_index(draft, key)
    if len(draft["stages"]) == 1:
        raise CaseTypeError("A case type needs at least one stage.")
    del draft["stages"][index]
    for stage in draft["stages"]:
        for action in stage.get("actions", []):
            if action.get("to") == key:
                action["to"] = ""
        for attribute in ("approve_to", "reject_to"):
            if stage.get(attribute) == key:
                stage[attribute] = ""
    save_draft(case_type, draft)


def move_stage(case_type: CaseType, key: str, offset: int) -> None:
    """Move a stage up (-1) or down (+1) in the order."""
    draft = _draft_copy(case_type)
    index = _stage_index(draft, key)
    target = index + offset
    if 0 <= target < len(draft["stages"]):
        stages = draft["stages"]
        stages[index], stages[target] = stages[target], stages[index]
        save_draft(case_type, draft)


def _save_checked(case_type: CaseType, draft: dict[str, Any]) -> None:
    try:
        save_draft(case_type, draft)
    except CaseTypeError as exc:
        raise CaseTypeError(_sentence(exc.problems) or str(exc), exc.problems) from None


def _sentence(problems: list[Problem]) -> str:
    return " ".join(p.message for p in problems)


def unknown_users(definition: Definition) -> list[Problem]:
    """Stages that name Casemail users who do not exist (or are inactive)."""
    problems = []
    for index, stage in enumerate(definition.stages):
        emails = []
        if stage.kind == WORK and stage.assignee_kind == "user":
            emails.append((f"stages[{index}].assignee", stage.assignee))
        if stage.kind == APPROVAL and stage.approver_source == "users":
            emails.extend((f"stages[{index}].approvers", a) for a in stage.approvers)
        for path, email in emails:
            user = db.session.scalar(select(User).where(User.email == email.lower()))
            if user is None or not user.active:
                problems.append(
                    Problem(path, f"{email} in {stage.name!r} is not an active Casemail user.")
                )
    return problems


def publication_problems(case_type: CaseType) -> list[Problem]:
    """Everything that keeps the draft from being published (empty: it can be)."""
    try:
        definition = draft_definition(case_type)
    except DefinitionError as exc:
        return exc.problems
    return list(definition.problems) + unknown_users(definition) + unknown_groups(definition)


def publish(case_type: CaseType, acting: User | None) -> CaseTypeVersion:
    """Freeze the draft as the next version; raises CaseTypeError listing what to change."""
    problems = publication_problems(case_type)
    if problems:
        raise CaseTypeError(f"The draft cannot be published yet: {_sentence(problems)}", problems)
    definition = draft_definition(case_type)
    # Writing the case type row first makes a concurrent publish of the same type wait for
    # this transaction (a row lock on PostgreSQL, the write lock on SQLite) and then read the
    # version it made, instead of both numbering the same version.
    db.session.execute(
        update(CaseType)
        .where(CaseType.id == case_type.id)
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    latest = db.session.scalar(
        select(CaseTypeVersion)
        .where(CaseTypeVersion.case_type_id == case_type.id)
        .order_by(CaseTypeVersion.number.desc())
        .limit(1)
        .execution_options(populate_existing=True)
    )
    if latest is not None and latest.definition == definition.to_dict():
        raise CaseTypeError(f"Version {latest.number} already has this definition.")
    version = CaseTypeVersion(
        case_type=case_type,
        number=(latest.number + 1) if latest else 1,
        definition=definition.to_dict(),
        published_by_id=acting.id if acting else None,
    )
    db.session.add(version)
    db.session.flush()
    return version


def version_definition(version: CaseTypeVersion) -> Definition:
    """The definition of a published version (published definitions are always valid)."""
    # Canonical JSON costs more than the rest of the lookup: a version loaded once answers
    # from its own entry for as long as its definition is the same object.
    known = _by_version.get(version)
    if known is not None and known[0] is version.definition:
        return known[1]
    parsed = _parsed_definition(json.dumps(version.definition, sort_keys=True))
    _by_version[version] = (version.definition, parsed)
    return parsed


_by_version: weakref.WeakKeyDictionary[CaseTypeVersion, tuple[object, Definition]] = (
    weakref.WeakKeyDictionary()
)


# Reading a definition costs about a millisecond and ingesting mail needs it twice per message.
# The cache is keyed by the definition's content, not the version's id, so it can never hand
# out a stale definition; a Definition is immutable (frozen dataclasses and tuples) to share.
@functools.lru_cache(maxsize=64)
def _parsed_definition(canonical: str) -> Definition:
    return parse_definition(json.loads(canonical), check=False)


def published_case_types() -> list[CaseType]:
    """Case types that have a published version, by name."""
    stmt = select(CaseType).where(CaseType.versions.any()).order_by(CaseType.name)
    return list(db.session.scalars(stmt))


def find_case_type(name_or_prefix: str) -> CaseType | None:
    value = name_or_prefix.strip()
    return db.session.scalar(
        select(CaseType).where(
            (func.lower(CaseType.name) == value.lower()) | (CaseType.prefix == value.upper())
        )
    )
