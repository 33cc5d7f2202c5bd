"""The sandbox for real: bubblewrap, seccomp and rlimits, with hostile algorithms.

No PostgreSQL or NATS here. Without Debian's ``bubblewrap`` (or where the kernel refuses it
namespaces) these tests skip with one line saying so; under ``DATAEX_REQUIRE_SANDBOX=1`` (set
by `.ci/run`) they fail instead, so CI cannot pass without them having run.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import NoReturn

import pytest

from exchange.compute import sandbox


@functools.cache
def _missing() -> str | None:
    problem = sandbox.platform_problem()
    if problem is not None:
        return f"the sandbox cannot run: {problem}"
    with tempfile.TemporaryDirectory(prefix="dataex-probe-") as folder:
        program = Path(folder) / "probe.py"
        program.write_text("pass\n")
        outcome = sandbox.run(program, {}, b"{}", sandbox.Limits(), Path(folder))
    if outcome.status != "exited" or outcome.exit_code != 0:
        return f"bubblewrap cannot make its namespaces here: {outcome.stderr_tail.strip()}"
    return None


@pytest.fixture(autouse=True)
def _sandbox_available() -> None:
    # An autouse fixture rather than markers added at collection: a `usefixtures` mark added
    # then does not reach a test's fixtures, so it would neither skip nor fail.
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("DATAEX_REQUIRE_SANDBOX") == "1":
        pytest.fail(f"DATAEX_REQUIRE_SANDBOX=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def servers() -> NoReturn:
    pytest.fail("the sandbox tests need no servers", pytrace=False)
