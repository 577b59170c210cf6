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
    menu: str | None = None  # shown inside this drop-down menu instead of the bar


def add_nav_item(
    app: Flask,
    label: str,
    endpoint: str,
    roles: tuple[Role, ...],
    order: int,
    prefix: str,
    menu: str | None = None,
) -> None:
    items: list[NavItem] = app.extensions.setdefault(_KEY, [])
    items.append(NavItem(label, endpoint, roles, order, prefix, menu))
    items.sort(key=lambda item: item.order)


def nav_for(app: Flask, user: User) -> list[NavItem]:
    items: list[NavItem] = app.extensions.get(_KEY, [])
    return [item for item in items if user.has_role(*item.roles)]


def menus(items: list[NavItem]) -> dict[str, list[NavItem]]:
    """The drop-down menus among `items`, by label, in the order their first items come."""
    grouped: dict[str, list[NavItem]] = {}
    for item in items:
        if item.menu:
            grouped.setdefault(item.menu, []).append(item)
    return grouped
