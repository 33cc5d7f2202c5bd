"""The output checks of a sandboxed job, on folders made by hand: what may leave and why not."""

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.compute.outputs import OutputRejected, Result, check, csv_rows

REGIONS = ["310000", "110000", "440300"]
# 3 regions, 4 months, 12 rows a month: every (region, month) group has 12 rows.
SALES = [
    {
        "customer_id": f"C{region}{month}{n:02d}",
        "name": f"客户{n}",
        "region": region,
        "month": f"2026-0{month}",
        "amount": f"{100 + n * 7 + month}.50",
        "age": str(20 + n),
    }
    for region in REGIONS
    for month in range(1, 5)
    for n in range(12)
]
IDENTIFIERS = {"customer_id", "name"}


def write(folder: Path, document: object, name: str = "result.json") -> Path:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(json.dumps(document), encoding="utf-8")
    return folder


def run_check(folder: Path, **overrides):
    arguments: dict[str, Any] = {
        "max_bytes": 1 << 20,
        "k": 10,
        "forbidden_columns": IDENTIFIERS,
        "input_rows": lambda: iter(SALES),
    }
    return check(folder, **(arguments | overrides))


def rejected(folder: Path, **overrides) -> OutputRejected:
    with pytest.raises(OutputRejected) as caught:
        run_check(folder, **overrides)
    return caught.value


def by_region_and_month() -> dict[str, Any]:
    groups: dict[tuple[str, str], list[float]] = {}
    for row in SALES:
        groups.setdefault((row["region"], row["month"]), []).append(float(row["amount"]))
    return {
        "columns": ["region", "month", "count", "mean_amount"],
        "rows": [[r, m, len(a), sum(a) / len(a)] for (r, m), a in sorted(groups.items())],
    }


def test_an_aggregate_by_region_and_month_passes_with_its_digest(tmp_path):
    folder = write(tmp_path / "out", by_region_and_month())
    result = run_check(folder)
    assert isinstance(result, Result)
    assert result.columns == ("region", "month", "count", "mean_amount")
    assert len(result.rows) == 12
    data = (folder / "result.json").read_bytes()
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.size == len(data)


def test_a_single_group_by_column_passes(tmp_path):
    # Its one key column equals every input row of its region: not row-level, 48 rows each.
    document = {"columns": ["region", "count"], "rows": [[r, 48] for r in REGIONS]}
    assert run_check(write(tmp_path / "out", document)).rows[0] == ("310000", 48)


def test_a_total_without_key_columns_passes(tmp_path):
    document = {"columns": ["count", "total"], "rows": [[len(SALES), 12345.5]]}
    assert run_check(write(tmp_path / "out", document)).rows == ((144, 12345.5),)


def test_numbers_spelt_differently_are_one_key(tmp_path):
    # The input has the regions as text, the output as integers: the same keys.
    document = {"columns": ["region", "count"], "rows": [[int(r), 48] for r in REGIONS]}
    run_check(write(tmp_path / "out", document))


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ([1, 2], "schema"),
        ({"columns": ["count"]}, "schema"),
        ({"columns": ["count"], "rows": [], "extra": 1}, "schema"),
        ({"columns": ["region"], "rows": []}, "schema"),
        ({"columns": ["count", "count"], "rows": []}, "schema"),
        ({"columns": [], "rows": []}, "schema"),
        ({"columns": ["count", ""], "rows": []}, "schema"),
        ({"columns": ["count", 3], "rows": []}, "schema"),
        ({"columns": ["count"], "rows": [[10, 1]]}, "schema"),
        ({"columns": ["count"], "rows": [["10"]]}, "schema"),
        ({"columns": ["count"], "rows": [[True]]}, "schema"),
        ({"columns": ["count"], "rows": [[10.0]]}, "schema"),
        ({"columns": ["count"], "rows": [[-1]]}, "schema"),
        ({"columns": ["count", "x"], "rows": [[10, [1]]]}, "schema"),
        ({"columns": ["count", "x"], "rows": [[10, {"a": 1}]]}, "schema"),
        ({"columns": ["count", "x"], "rows": [[10, "x" * 1001]]}, "schema"),
        ({"columns": ["count"], "rows": [[10]] * 10_001}, "schema"),
    ],
)
def test_documents_not_of_the_declared_shape_are_schema_errors(tmp_path, document, reason):
    assert rejected(write(tmp_path / "out", document)).reason == reason


@pytest.mark.parametrize(
    "text",
    [b"{not json", b"\xff\xfe{}", b'{"columns": ["count"], "rows": [[NaN]]}', b"[" * 100_000],
)
def test_what_is_not_utf8_json_is_not_json(tmp_path, text):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "result.json").write_bytes(text)
    assert rejected(folder).reason == "not_json"


def test_an_infinite_number_is_a_schema_error(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "result.json").write_bytes(b'{"columns": ["count", "x"], "rows": [[10, 1e999]]}')
    assert rejected(folder).reason == "schema"


def test_an_empty_folder_is_missing(tmp_path):
    (tmp_path / "out").mkdir()
    assert rejected(tmp_path / "out").reason == "missing"


def test_a_result_over_the_size_limit_is_too_large(tmp_path):
    folder = write(tmp_path / "out", by_region_and_month())
    size = (folder / "result.json").stat().st_size
    assert rejected(folder, max_bytes=size - 1).reason == "too_large"
    run_check(folder, max_bytes=size)


def test_another_file_beside_the_result_is_refused(tmp_path):
    folder = write(tmp_path / "out", by_region_and_month())
    (folder / "sales.csv").write_text("copied")
    problem = rejected(folder)
    assert problem.reason == "schema"
    assert "sales.csv" not in problem.detail  # a name the algorithm chose is not repeated


@pytest.mark.parametrize("kind", ["symlink", "folder", "fifo", "dangling"])
def test_anything_but_a_regular_file_is_not_regular_file(tmp_path, kind):
    folder = tmp_path / "out"
    folder.mkdir()
    target = write(tmp_path / "elsewhere", by_region_and_month()) / "result.json"
    entry = folder / "result.json"
    if kind == "symlink":
        entry.symlink_to(target)
    elif kind == "dangling":
        entry.symlink_to(tmp_path / "nothing")
    elif kind == "folder":
        entry.mkdir()
    else:
        os.mkfifo(entry)
    assert rejected(folder).reason == "not_regular_file"


def test_what_the_sandbox_refused_to_copy_is_not_regular_file(tmp_path):
    folder = write(tmp_path / "out", by_region_and_month())
    problem = rejected(folder, refused=("result.json (link)",))
    assert problem.reason == "not_regular_file"


@pytest.mark.parametrize("column", ["customer_id", "Customer ID", "NAME", "customer-id"])
def test_an_identifier_column_is_refused_however_it_is_spelt(tmp_path, column):
    document = {"columns": [column, "count"], "rows": [["x", 10]]}
    problem = rejected(write(tmp_path / "out", document))
    assert problem.reason == "identifier"
    assert "'customer_id'" in problem.detail or "'name'" in problem.detail  # the manual's name


def test_a_chinese_identifier_column_is_refused(tmp_path):
    document = {"columns": ["身份证号", "count"], "rows": [["x", 10]]}
    assert rejected(write(tmp_path / "out", document), forbidden_columns={"身份证号"}).reason == (
        "identifier"
    )


def test_the_identifier_is_reported_before_small_groups(tmp_path):
    # Grouping by an identifier makes groups of one too: the identifier is the reason given.
    document = {"columns": ["customer_id", "count"], "rows": [[r["customer_id"], 1] for r in SALES]}
    assert rejected(write(tmp_path / "out", document)).reason == "identifier"


def test_a_group_below_k_is_refused(tmp_path):
    document = by_region_and_month()
    document["rows"][3][2] = 9
    problem = rejected(write(tmp_path / "out", document))
    assert problem.reason == "k"
    assert "row 3" in problem.detail


def test_k_is_the_plans(tmp_path):
    folder = write(tmp_path / "out", by_region_and_month())  # groups of 12
    assert rejected(folder, k=13).reason == "k"
    run_check(folder, k=12)


def test_copied_input_rows_with_a_forged_count_are_row_level(tmp_path):
    columns = ["region", "month", "amount", "age"]
    document = {
        "columns": [*columns, "count"],
        "rows": [[row[c] for c in columns] + [10] for row in SALES],
    }
    problem = rejected(write(tmp_path / "out", document))
    assert problem.reason == "row_level"
    assert "row 0" in problem.detail


def test_copied_rows_with_extra_made_up_columns_are_still_row_level(tmp_path):
    columns = ["region", "month", "amount", "age"]
    document = {
        "columns": [*columns, "count", "x1", "x2", "x3", "x4", "x5"],
        "rows": [[row[c] for c in columns] + [10, 1, 2, 3, 4, 5] for row in SALES],
    }
    assert rejected(write(tmp_path / "out", document)).reason == "row_level"


def test_copied_rows_with_one_value_changed_are_row_level(tmp_path):
    columns = ["region", "month", "amount", "age"]
    document = {
        "columns": [*columns, "count"],
        "rows": [[row[c] for c in columns[:-1]] + ["99", 10] for row in SALES],
    }
    problem = rejected(write(tmp_path / "out", document))
    assert problem.reason == "row_level"
    assert "all columns but one" in problem.detail


def test_a_group_whose_declared_count_is_false_is_row_level(tmp_path):
    # Grouped by age (12 distinct ages, each shared by 12 rows) and region: 4 rows a group, not 10.
    groups: dict[tuple[str, str], int] = {}
    for row in SALES:
        groups[(row["region"], row["age"])] = groups.get((row["region"], row["age"]), 0) + 1
    document = {
        "columns": ["region", "age", "count"],
        "rows": [[r, a, 10] for (r, a), _ in sorted(groups.items())],
    }
    assert rejected(write(tmp_path / "out", document)).reason == "row_level"


def test_rows_no_input_row_comes_near_are_not_judged(tmp_path):
    # Computed values under an input column's name match nothing: the table passes.
    document = by_region_and_month()
    document["columns"][3] = "amount"
    run_check(write(tmp_path / "out", document))


def test_input_rows_are_read_once_and_only_after_the_other_checks(tmp_path):
    calls = []

    def rows():
        calls.append(1)
        return iter(SALES)

    rejected(write(tmp_path / "bad", {"columns": ["name", "count"], "rows": []}), input_rows=rows)
    assert calls == []
    run_check(write(tmp_path / "good", by_region_and_month()), input_rows=rows)
    assert calls == [1]


def test_csv_rows_streams_files_with_or_without_a_bom(tmp_path):
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_bytes("\ufeffregion,amount\n310000,1.5\n".encode())
    second.write_text("region,amount\n110000,2\n", encoding="utf-8")
    assert list(csv_rows(first, second)) == [
        {"region": "310000", "amount": "1.5"},
        {"region": "110000", "amount": "2"},
    ]


def test_a_large_input_is_checked_in_one_streamed_pass(tmp_path):
    # 100,000 input rows against 1,000 output groups: hashed look-ups, one pass; rows by rows
    # would be 10^8 comparisons.
    big = tmp_path / "big.csv"
    with big.open("w", encoding="utf-8") as out:
        out.write("region,month,product,amount\n")
        for n in range(100_000):
            out.write(f"{n % 10},{n // 10 % 10},{n // 100 % 10},{n}\n")
    document = {
        "columns": ["region", "month", "product", "count"],
        "rows": [[str(n % 10), str(n // 10 % 10), str(n // 100), 100] for n in range(1000)],
    }
    folder = write(tmp_path / "out", document)
    passes = []

    def rows():
        passes.append(1)
        return csv_rows(big)

    started = time.perf_counter()
    assert len(run_check(folder, input_rows=rows).rows) == 1000
    assert time.perf_counter() - started < 5
    assert passes == [1]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(range(len(SALES))), min_size=1, max_size=20, unique=True))
def test_any_copied_rows_are_refused(tmp_path_factory, picked):
    columns = ["region", "month", "amount", "age"]
    document = {
        "columns": [*columns, "count"],
        "rows": [[SALES[i][c] for c in columns] + [10] for i in picked],
    }
    folder = write(tmp_path_factory.mktemp("out"), document)
    assert rejected(folder).reason == "row_level"
