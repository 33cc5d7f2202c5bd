"""The parts of `dataex up` share one standard error: every log line must stay whole, however
long it is and however many processes write at once (a reader parses the file line by line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WRITER = """
import sys
from exchange.platform.logging import configure_logging, get_logger

configure_logging("json")
log = get_logger("writer")
name = sys.argv[1]
for n in range(200):
    # Long lines (about 20 KiB) like a reconciler's list of trade ids, and short ones between.
    log.warning("long", writer=name, n=n, ids=[f"{name}-{n}-{i:05d}" for i in range(1200)])
    log.info("short", writer=name, n=n)
"""


def test_lines_of_several_processes_writing_at_once_stay_whole(tmp_path: Path):
    out = tmp_path / "shared.err"
    with out.open("w") as err:
        writers = [
            subprocess.Popen([sys.executable, "-c", WRITER, str(w)], stderr=err) for w in range(4)
        ]
        assert [writer.wait(timeout=120) for writer in writers] == [0, 0, 0, 0]
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # raises on a line broken by another
    assert len(records) == 4 * 200 * 2
    longs = [r for r in records if r["event"] == "long"]
    assert all(len(r["ids"]) == 1200 for r in longs)
    assert sorted((r["writer"], r["n"]) for r in longs) == sorted(
        (str(w), n) for w in range(4) for n in range(200)
    )


def test_a_line_goes_to_the_standard_error_of_the_moment(capsys):
    """pytest's capture replaces `sys.stderr` (with or without a file descriptor): lines follow."""
    from exchange.platform.logging import configure_logging, get_logger

    configure_logging("json")
    get_logger("t").info("hello", where="capsys")
    assert json.loads(capsys.readouterr().err.strip())["where"] == "capsys"
