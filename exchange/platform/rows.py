"""Named rows for multi-row writes: the fields give the column list and the casts.

A multi-row INSERT sends one array per column (``INSERT INTO t (a, b) SELECT * FROM
unnest($1::uuid[], $2::text[])``): one round trip however many rows. Written by hand, the
column list, the casts and the order of values in each tuple must be kept in step; here a
`Row` subclass names its table and types its columns once, and `insert_sql` / `arrays` derive
the rest, so a new column is one new field.

A row type lives in the package that owns its table (a test checks it); other rooms append
rows of an owner's type only where the owner exports it for a statement shared for speed
(the order path's single write).
"""

from __future__ import annotations

import types
import uuid
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Annotated, Any, ClassVar, Union, get_args, get_origin, get_type_hints

import msgspec


class SqlType(msgspec.Struct, frozen=True):
    """Overrides the column's SQL type where the Python type is not enough:
    ``revision: Annotated[int, SqlType("integer")]``."""

    name: str


_TYPES: dict[Any, str] = {
    uuid.UUID: "uuid",
    str: "text",
    int: "bigint",
    bool: "boolean",
    datetime: "timestamptz",
    bytes: "bytea",
    dict: "jsonb",
    Any: "jsonb",
}


def _sql_type(hint: Any) -> str:
    if get_origin(hint) is Annotated:
        base, *extras = get_args(hint)
        for extra in extras:
            if isinstance(extra, SqlType):
                return extra.name
        return _sql_type(base)
    if get_origin(hint) in (Union, types.UnionType):
        present = [a for a in get_args(hint) if a is not type(None)]
        assert len(present) == 1, f"a column has one type, not {hint}"
        return _sql_type(present[0])
    base = get_origin(hint) or hint
    if base in _TYPES:
        return _TYPES[base]
    raise TypeError(f"no SQL type for {hint!r}: annotate it with SqlType(...)")


class Row(msgspec.Struct, frozen=True):
    """One row of ``__table__``; the fields, in order, are its columns."""

    __table__: ClassVar[str]


@cache
def columns(kind: type[Row]) -> tuple[tuple[str, str], ...]:
    """(column, SQL type) of each field, in declaration order."""
    hints = get_type_hints(kind, include_extras=True)
    return tuple((name, _sql_type(hints[name])) for name in kind.__struct_fields__)


def arrays(kind: type[Row], rows: Sequence[Row]) -> list[list[Any]]:
    """One list per column, the rows' values in order (the statement's parameters)."""
    names = kind.__struct_fields__
    return [[getattr(row, name) for row in rows] for name in names]


def unnest(kind: type[Row], first: int) -> str:
    """``unnest($first::type[], …)`` over the columns of ``kind``, parameters from ``first``."""
    return (
        "unnest("
        + ", ".join(f"${first + i}::{sql}[]" for i, (_, sql) in enumerate(columns(kind)))
        + ")"
    )


def insert_sql(kind: type[Row], first: int = 1, suffix: str = "") -> str:
    """``INSERT INTO table (columns) SELECT * FROM unnest(...)`` with ``suffix`` (ON CONFLICT,
    RETURNING) after it."""
    names = ", ".join(name for name, _ in columns(kind))
    statement = f"INSERT INTO {kind.__table__} ({names}) SELECT * FROM {unnest(kind, first)}"
    return f"{statement} {suffix}".rstrip()
