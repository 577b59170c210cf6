"""Row IDs: the range the database holds them in, and reading one from a URL, a form or a query."""

from __future__ import annotations

from typing import Any

from werkzeug.routing import IntegerConverter, Map

# Primary keys are `integer` columns, 32 bits on PostgreSQL. A larger number names no row, yet
# handed to the database it is an error (PostgreSQL's DataError, SQLite's OverflowError past
# 64 bits) rather than "not found": it is turned away before a query is made.
MAX_ID = 2**31 - 1


def is_id(number: int) -> bool:
    """Whether `number` can be the ID of a row."""
    return 1 <= number <= MAX_ID


def as_id(value: Any) -> int:
    """`value` (a number or its text) as a row ID; raises ValueError when it cannot be one."""
    number = int(value)
    if not is_id(number):
        raise ValueError(f"{number} is not an ID from 1 to {MAX_ID}")
    return number


def id_in(text: str) -> int | None:
    """The row ID `text` (from a query string) writes in ASCII digits, or None."""
    if text.isascii() and text.isdigit() and is_id(int(text)):
        return int(text)
    return None


def as_optional_id(value: Any) -> int | None:
    """as_id, with None for a select's empty choice (None, "" or "None")."""
    return None if value in (None, "", "None") else as_id(value)


class IdConverter(IntegerConverter):
    """The app's `<int:...>`: at most MAX_ID, so that a larger number in a URL is a 404.

    The lower end stays werkzeug's 0, because `<int:...>` also numbers an attachment from 0.
    """

    def __init__(
        self,
        map: Map,
        fixed_digits: int = 0,
        min: int | None = None,
        max: int | None = MAX_ID,
        signed: bool = False,
    ) -> None:
        super().__init__(map, fixed_digits, min, max, signed)
