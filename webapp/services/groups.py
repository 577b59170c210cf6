"""Work-queue groups: create, rename, delete, manage members; check definitions that name them."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select

from webapp.casetypes.definition import WORK, Definition, Problem
from webapp.extensions import db
from webapp.models import Case, CaseType, CaseTypeVersion, Role, User, WorkGroup, work_group_members

MAX_NAME = 60
MEMBER_ROLES = (Role.WORKER.value, Role.ADMIN.value)


class GroupError(ValueError):
    """A group change was refused; the message is fit to show."""


def find_group(name: str) -> WorkGroup | None:
    """The group with this name, compared without regard to case."""
    return db.session.scalar(
        select(WorkGroup).where(func.lower(WorkGroup.name) == name.strip().lower())
    )


def all_groups() -> list[WorkGroup]:
    return list(db.session.scalars(select(WorkGroup).order_by(WorkGroup.name)))


def group_names_of(user: User) -> frozenset[str]:
    """The lowercased names of the groups `user` belongs to."""
    stmt = (
        select(func.lower(WorkGroup.name))
        .join(work_group_members, work_group_members.c.group_id == WorkGroup.id)
        .where(work_group_members.c.user_id == user.id)
    )
    return frozenset(db.session.scalars(stmt))


def _check_name(name: str, group: WorkGroup | None) -> str:
    name = " ".join(name.split())
    if not name or len(name) > MAX_NAME:
        raise GroupError(f"Give the group a name of at most {MAX_NAME} characters.")
    other = find_group(name)
    if other is not None and other is not group:
        raise GroupError(f"A group named {other.name!r} already exists; choose another name.")
    return name


def create_group(name: str) -> WorkGroup:
    """A new, empty group; raises GroupError for an empty, long or taken name."""
    group = WorkGroup(name=_check_name(name, None))
    db.session.add(group)
    db.session.flush()
    return group


def rename_group(group: WorkGroup, name: str) -> list[str]:
    """Rename the group and the stages that route to it; returns the case types changed.

    Published versions follow too: the rename changes what the group is called, not where
    the version routes its cases. Raises GroupError for an empty, long or taken name.
    """
    old = group.name
    group.name = _check_name(name, group)
    changed: set[str] = set()
    if group.name != old:
        for case_type in db.session.scalars(select(CaseType)):
            draft = _renamed(case_type.draft, old, group.name)
            if draft is not None:
                case_type.draft = draft
                changed.add(case_type.name)
        for version in db.session.scalars(select(CaseTypeVersion)):
            definition = _renamed(version.definition, old, group.name)
            if definition is not None:
                version.definition = definition
                changed.add(version.case_type.name)
    db.session.flush()
    return sorted(changed)


def _renamed(definition: dict[str, Any], old: str, new: str) -> dict[str, Any] | None:
    """A copy of `definition` with its stages routed to `new` instead of `old`, or None when
    no stage routes to `old`."""
    result = copy.deepcopy(definition)
    found = False
    for stage in result.get("stages", []):
        if _routes_to(stage, old):
            stage["assignee"] = new
            found = True
    return result if found else None


def _routes_to(stage: dict[str, Any], name: str) -> bool:
    return (
        stage.get("kind") == WORK
        and stage.get("assignee_kind") == "group"
        and str(stage.get("assignee", "")).lower() == name.lower()
    )


def case_types_using(group: WorkGroup) -> list[str]:
    """Names of the case types that still route to `group`: in their draft, their newest
    version (new cases), or a version that open cases are on."""
    open_versions = set(
        db.session.scalars(select(Case.version_id).where(Case.status == "open").distinct())
    )
    names = set()
    for case_type in db.session.scalars(select(CaseType)):
        definitions = [case_type.draft]
        definitions.extend(
            v.definition
            for v in case_type.versions
            if v is case_type.latest_version or v.id in open_versions
        )
        if any(_routes_to(s, group.name) for d in definitions for s in d.get("stages", [])):
            names.add(case_type.name)
    return sorted(names)


def delete_group(group: WorkGroup) -> None:
    """Delete a group no case type routes to; raises GroupError naming those that do."""
    using = case_types_using(group)
    if using:
        raise GroupError(
            f"{group.name} is the work queue of a stage in {', '.join(using)}; "
            "route those stages elsewhere (and publish) before deleting the group."
        )
    db.session.delete(group)
    db.session.flush()


def set_members(group: WorkGroup, emails: Iterable[str]) -> None:
    """Make exactly these users the members; raises GroupError for unknown users or users
    who do not work cases."""
    wanted = list(dict.fromkeys(e.strip().lower() for e in emails if e.strip()))
    users = list(db.session.scalars(select(User).where(User.email.in_(wanted))))
    found = {u.email for u in users}
    unknown = [e for e in wanted if e not in found]
    if unknown:
        raise GroupError(f"There is no user {', '.join(unknown)}.")
    not_workers = [u.email for u in users if u.role not in MEMBER_ROLES]
    if not_workers:
        raise GroupError(
            f"Only workers and admins work cases; {', '.join(not_workers)} cannot be a member."
        )
    group.members = sorted(users, key=lambda u: u.email)
    db.session.flush()


def unknown_groups(definition: Definition) -> list[Problem]:
    """Stages that route to a group that does not exist."""
    problems = []
    for index, stage in enumerate(definition.stages):
        routed = stage.kind == WORK and stage.assignee_kind == "group" and stage.assignee
        if routed and find_group(stage.assignee) is None:
            problems.append(
                Problem(
                    f"stages[{index}].assignee",
                    f"There is no work group {stage.assignee!r} for {stage.name!r}; "
                    "create it under Groups or pick another.",
                )
            )
    return problems
