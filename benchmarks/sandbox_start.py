"""What the sandbox adds to a job's start, beside the same trivial program run without it.

`measure_start_overhead` runs a program that does nothing (``pass``), ``runs`` times each way,
the two interleaved so both see the same load on the machine:

- **plain**: ``/usr/bin/python3 -I -S program.py`` as a subprocess (the sandbox's interpreter
  with the sandbox's flags);
- **sandbox**: `exchange.compute.sandbox.run` on it with the default limits: staging, the
  memfds, bubblewrap's namespaces and mounts, the seccomp filter, the launcher (as init, with
  its fork), the output listing and its copy.

Both are timed from the caller's side, wall clock, start to end. The target is at most 50 ms
more at the median (issue 20). Figures, not tests.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from exchange.compute import sandbox


def measure_start_overhead(runs: int = 50) -> dict[str, Any]:
    """Median and p95 (ms) of ``runs`` starts with and without the sandbox, and the difference."""
    if runs < 2:
        raise ValueError("runs must be at least 2 for a p95")
    plain: list[float] = []
    sandboxed: list[float] = []
    with tempfile.TemporaryDirectory(prefix="dataex-bench-sandbox-") as folder:
        program = Path(folder) / "trivial.py"
        program.write_text("pass\n")
        command = [str(sandbox.SYSTEM_PYTHON), "-I", "-S", str(program)]
        sandbox.run(program, {}, b"{}", sandbox.Limits(), _workdir(folder, -1))  # warm caches
        for run in range(runs):
            started = time.perf_counter()
            subprocess.run(command, check=True)
            plain.append(time.perf_counter() - started)
            workdir = _workdir(folder, run)
            started = time.perf_counter()
            outcome = sandbox.run(program, {}, b"{}", sandbox.Limits(), workdir)
            sandboxed.append(time.perf_counter() - started)
            if (outcome.status, outcome.exit_code) != ("exited", 0):
                raise RuntimeError(f"the sandbox failed to run a trivial program: {outcome}")
    return {
        "runs": runs,
        "plain_median_ms": _ms(statistics.median(plain)),
        "plain_p95_ms": _ms(_p95(plain)),
        "sandbox_median_ms": _ms(statistics.median(sandboxed)),
        "sandbox_p95_ms": _ms(_p95(sandboxed)),
        "overhead_median_ms": _ms(statistics.median(sandboxed) - statistics.median(plain)),
        "overhead_p95_ms": _ms(_p95(sandboxed) - _p95(plain)),
        "target_overhead_ms": 50,
    }


def _workdir(folder: str, run: int) -> Path:
    workdir = Path(folder) / f"job-{run}"
    workdir.mkdir()
    return workdir


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
