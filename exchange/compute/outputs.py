"""What may leave a sandboxed job: one declared table of aggregates, and nothing else.

A job's output folder (`exchange.compute.sandbox.run` copies it out) must hold exactly one
regular file, ``result.json``, no larger than the plan allows::

    {"columns": ["region", "month", "count", "mean_amount"],
     "rows": [["310000", "2026-01", 412, 1830.5], ...]}

`check` accepts it, or raises `OutputRejected` with the first reason that applies, in this
order:

- ``not_regular_file``: a link, folder, device or other non-file in the folder (or one the
  sandbox refused to copy: ``refused``);
- ``schema``: any other file beside ``result.json``; a document not of the shape above (columns
  unique non-empty strings with a ``count`` among them; every row as long as ``columns``; cells
  strings, finite numbers, booleans or null; ``count`` a non-negative integer); more rows than
  ``max_rows``;
- ``missing``: no ``result.json``; ``too_large``: over ``max_bytes``; ``not_json``: not UTF-8
  JSON (NaN and Infinity included);
- ``identifier``: a column the data's manual marks as an identifier or personal information
  (``forbidden_columns``; compared ignoring case, spaces and punctuation: ``ID Number`` is
  ``id_number``);
- ``k``: a group whose ``count`` is below ``k``;
- ``row_level``: an output row that stands for fewer than ``k`` input rows. Its *key* is its
  values in the output's non-count columns that the input rows also have, compared as text with
  numbers normalised (``12.50``, ``12.5`` and ``"12.5"`` are one value). A row is row-level when
  1 to k-1 input rows have its key — the count it declares is then not true — or, when no
  input row has it and the key has three columns or more, when 1 to k-1 input rows agree
  with it on all of them but one (a copied row with one value changed). A legitimate group
  (``region`` with its count) has at least k input rows with its key, so it passes; a row no
  input row comes near (computed values) is not judged here.

These checks catch an algorithm that copies its inputs out, groups by an identifier, or
declares groups smaller than they are. They are not a privacy proof: an algorithm can rename
columns or perturb values and pass them. Noise on the released aggregates (differential
privacy) is what bounds what an output reveals.

The input is streamed once (``input_rows`` may read files of any size); the output's keys are
hashed, so the cost is one pass over the input with a few dictionary look-ups a row.
"""

from __future__ import annotations

import csv
import decimal
import functools
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, Final, Literal, cast

Reason = Literal[
    "missing",
    "not_regular_file",
    "too_large",
    "not_json",
    "schema",
    "k",
    "identifier",
    "row_level",
]
Cell = str | int | float | bool | None

RESULT_NAME: Final = "result.json"
COUNT_COLUMN: Final = "count"
DEFAULT_K: Final = 10
MAX_ROWS: Final = 10_000
MAX_COLUMNS: Final = 100
MAX_NAME_CHARS: Final = 100
MAX_CELL_CHARS: Final = 1_000
_NEAR_MIN_COLUMNS: Final = 3  # "all but one" is more than half from three columns up


class OutputRejected(Exception):
    """The job's output may not leave: ``reason`` (one of `Reason`) and a ``detail`` for the
    buyer naming what is at fault by kind, row number or a column the manual marks — never an
    input value, nor a file name or text the algorithm chose (that would be a way out)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Result:
    """An accepted output: its table, and the SHA-256 and size of ``result.json`` as stored."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    sha256: str
    size: int


def check(
    output_dir: Path,
    *,
    max_bytes: int,
    k: int = DEFAULT_K,
    forbidden_columns: Collection[str],
    input_rows: Callable[[], Iterable[Mapping[str, Any]]],
    refused: Collection[str] = (),
    max_rows: int = MAX_ROWS,
) -> Result:
    """Accept the job's output in ``output_dir`` or raise `OutputRejected` (module docstring).

    ``input_rows`` is called once, only when every other check has passed, and its rows are
    read one at a time. ``refused`` is `Outcome.output_refused` from the sandbox.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    if refused:
        raise OutputRejected(
            "not_regular_file", f"{len(refused)} entries of the output folder are not files"
        )
    data = _read_declared(output_dir, max_bytes)
    columns, rows = _parse(data, max_rows)
    _no_identifier(columns, forbidden_columns)
    count_at = columns.index(COUNT_COLUMN)
    for number, row in enumerate(rows):
        if row[count_at] < k:  # type: ignore[operator]  # _parse checked it is an int
            raise OutputRejected("k", f"row {number} counts {row[count_at]}, fewer than {k}")
    _not_row_level(columns, rows, k, input_rows())
    return Result(
        columns=columns, rows=rows, sha256=hashlib.sha256(data).hexdigest(), size=len(data)
    )


def csv_rows(*paths: Path) -> Iterator[dict[str, str]]:
    """The rows of CSV files (a header line, then rows; UTF-8, with or without a BOM), one at a
    time: an ``input_rows`` for `check`."""
    for path in paths:
        with path.open(newline="", encoding="utf-8-sig") as lines:
            yield from csv.DictReader(lines)


def _read_declared(output_dir: Path, max_bytes: int) -> bytes:
    # Details never repeat a name the algorithm chose: a rejection is not a way out for data.
    if not output_dir.is_dir():
        raise OutputRejected("missing", "the job left no output folder")
    with os.scandir(output_dir) as entries:
        listed = sorted((e.name, e.stat(follow_symlinks=False).st_mode) for e in entries)
    for name, mode in listed:
        if not stat.S_ISREG(mode):
            shown = RESULT_NAME if name == RESULT_NAME else "an entry"
            raise OutputRejected("not_regular_file", f"{shown} is {_kind(mode)}, not a file")
    others = [name for name, _ in listed if name != RESULT_NAME]
    if others:
        raise OutputRejected(
            "schema", f"only {RESULT_NAME} may be written; found {len(others)} other file(s)"
        )
    if not listed:
        raise OutputRejected("missing", f"the job wrote no {RESULT_NAME}")
    fd = os.open(output_dir / RESULT_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as result:
        data = result.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OutputRejected("too_large", f"{RESULT_NAME} is larger than {max_bytes} bytes")
    return data


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a link"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a device, socket or pipe"


def _parse(data: bytes, max_rows: int) -> tuple[tuple[str, ...], tuple[tuple[Cell, ...], ...]]:
    try:
        document = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise OutputRejected("not_json", f"{RESULT_NAME} is not UTF-8 JSON: {error}") from None
    if not isinstance(document, dict) or set(document) != {"columns", "rows"}:
        raise OutputRejected("schema", 'the result is an object with "columns" and "rows" only')
    columns = _columns(document["columns"])
    raw_rows = document["rows"]
    if not isinstance(raw_rows, list) or len(raw_rows) > max_rows:
        raise OutputRejected("schema", f'"rows" is a list of at most {max_rows} rows')
    count_at = columns.index(COUNT_COLUMN)
    rows = tuple(_row(number, row, len(columns), count_at) for number, row in enumerate(raw_rows))
    return columns, rows


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _columns(raw: object) -> tuple[str, ...]:
    if (
        not isinstance(raw, list)
        or not 0 < len(raw) <= MAX_COLUMNS
        or not all(isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS for name in raw)
        or len(set(raw)) != len(raw)
    ):
        raise OutputRejected(
            "schema",
            f'"columns" is a list of 1 to {MAX_COLUMNS} distinct names of 1 to '
            f"{MAX_NAME_CHARS} characters",
        )
    if COUNT_COLUMN not in raw:
        raise OutputRejected(
            "schema", f'"columns" must include "{COUNT_COLUMN}": the size of each group'
        )
    return tuple(raw)


def _row(number: int, raw: object, width: int, count_at: int) -> tuple[Cell, ...]:
    if not isinstance(raw, list) or len(raw) != width:
        raise OutputRejected("schema", f"row {number} is not a list of {width} cells")
    for cell in raw:
        if not _is_cell(cell):
            raise OutputRejected(
                "schema",
                f"row {number} has a cell that is not a string (of at most {MAX_CELL_CHARS} "
                "characters), a finite number, a boolean or null",
            )
    count = raw[count_at]
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise OutputRejected("schema", f'row {number}: "{COUNT_COLUMN}" is not an integer ≥ 0')
    return tuple(raw)


def _is_cell(cell: object) -> bool:
    if cell is None or isinstance(cell, bool | int):
        return True
    if isinstance(cell, float):
        return math.isfinite(cell)
    return isinstance(cell, str) and len(cell) <= MAX_CELL_CHARS


def _no_identifier(columns: Sequence[str], forbidden: Collection[str]) -> None:
    marked = {key: name for name in forbidden if (key := _column_key(name))}
    for column in columns:
        if _column_key(column) in marked:
            raise OutputRejected(
                "identifier",
                f"a column is {marked[_column_key(column)]!r}, which the data's manual "
                "marks as an identifier or personal information",
            )


def _column_key(name: str) -> str:
    return "".join(char for char in name.casefold() if char.isalnum())


# --- row-level data -------------------------------------------------------------------------


_Projection = Callable[[tuple[str, ...]], tuple[str, ...]]


class _Keys:
    """The output rows' keys on the columns one kind of input row has, hashed for look-ups:
    exactly, and (from three columns) on each two thirds of them, which any input row agreeing
    on all columns but one matches in full.

    A row leaves the near look-ups once they can no longer matter for it (`forget`): when an
    input row has its exact key, or k rows came near it. A legitimate table's rows all leave
    early, so the near look-ups cost little after the first input rows.
    """

    def __init__(self, names: tuple[str, ...], keys: Sequence[tuple[str, ...]]) -> None:
        self.names = names
        self.keys = keys
        self.exact: dict[tuple[str, ...], list[int]] = {}
        for row, key in enumerate(keys):
            self.exact.setdefault(key, []).append(row)
        self.parts: list[tuple[_Projection, dict[tuple[str, ...], set[int]]]] = []
        self.open: set[int] = set()  # rows still in the near look-ups
        if len(names) >= _NEAR_MIN_COLUMNS:
            self.open = set(range(len(keys)))
            for left_out in range(3):
                kept = (at for at in range(len(names)) if at % 3 != left_out)
                part = cast("_Projection", itemgetter(*kept))  # fast; always ≥ 2 columns
                index: dict[tuple[str, ...], set[int]] = {}
                for row, key in enumerate(keys):
                    index.setdefault(part(key), set()).add(row)
                self.parts.append((part, index))

    def match(self, values: tuple[str, ...]) -> tuple[list[int], set[int]]:
        """(output rows with exactly this key, output rows agreeing on all but one column)."""
        near: set[int] = set()
        if self.open:
            for part, index in self.parts:
                for row in index.get(part(values), ()):
                    if sum(a != b for a, b in zip(values, self.keys[row], strict=True)) == 1:
                        near.add(row)
        return self.exact.get(values, []), near

    def forget(self, row: int) -> None:
        if row in self.open:
            self.open.discard(row)
            for part, index in self.parts:
                index[part(self.keys[row])].discard(row)


def _not_row_level(
    columns: tuple[str, ...],
    rows: tuple[tuple[Cell, ...], ...],
    k: int,
    inputs: Iterable[Mapping[str, Any]],
) -> None:
    described = [at for at, name in enumerate(columns) if name != COUNT_COLUMN]
    texts = [tuple(_text(row[at]) for at in described) for row in rows]
    exact = [0] * len(rows)
    near = [0] * len(rows)
    by_kind: dict[tuple[str, ...], _Keys] = {}  # input columns → the output's keys on them
    for record in inputs:
        kind = tuple(record)
        keys = by_kind.get(kind)
        if keys is None:
            shared = [i for i, at in enumerate(described) if columns[at] in record]
            names = tuple(columns[described[i]] for i in shared)
            keys = by_kind[kind] = _Keys(names, [tuple(text[i] for i in shared) for text in texts])
            for row in range(len(rows)):
                if exact[row] or near[row] >= k:
                    keys.forget(row)
        if not keys.names:
            continue
        hits, close = keys.match(tuple(map(_text, map(record.__getitem__, keys.names))))
        for row in hits:
            exact[row] += 1
        for row in close:
            near[row] += 1
        for row in (*hits, *close):
            if exact[row] == 1 or near[row] == k:
                for each in by_kind.values():
                    each.forget(row)
    for number in range(len(rows)):
        support = exact[number] or near[number]
        if 0 < support < k:
            how = "have its key" if exact[number] else "agree with it on all columns but one"
            raise OutputRejected(
                "row_level",
                f"row {number} stands for {support} input row(s) (they {how}), fewer than {k}: "
                "an output row must describe a group of at least k input rows",
            )


_NUMBER: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_DECIMALS: Final = decimal.Context(prec=200)


@functools.lru_cache(maxsize=1 << 16, typed=True)  # typed: True and 1 are equal keys
def _text(value: Any) -> str:
    """A cell as text for comparison: numbers in one normal form whatever their spelling."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value) if isinstance(value, float) else str(value).strip()
    if not _NUMBER.fullmatch(text):
        return text
    number = _DECIMALS.create_decimal(text).normalize(_DECIMALS)
    return "0" if number.is_zero() else str(number)
