"""The main navigation, filled by each area as it registers, shown by role."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask

from webapp.models import Role, User

_KEY = "casemail.nav"


@dataclass(frozen=True)
class NavItem:
    label: str
    endpoint: str
    roles: tuple[Role, ...]
    order: int
    prefix: str  # URL prefix that marks the item active


def add_nav_item(
    app: Flask, label: str, endpoint: str, roles: tuple[Role, ...], order: int, prefix: str
) -> None:
    items: list[NavItem] = app.extensions.setdefault(_KEY, [])
    items.append(NavItem(label, endpoint, roles, order, prefix))
    items.sort(key=lambda item: item.order)


def nav_for(app: Flask, user: User) -> list[NavItem]:
    items: list[NavItem] = app.extensions.get(_KEY, [])
    return [item for item in items if user.has_role(*item.roles)]
