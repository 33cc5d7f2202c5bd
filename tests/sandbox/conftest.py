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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    sandbox_items = [item for item in items if "tests/sandbox/" in str(item.fspath)]
    if not sandbox_items:
        return
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("DATAEX_REQUIRE_SANDBOX") == "1":
        for item in sandbox_items:
            item.add_marker(pytest.mark.usefixtures("_sandbox_required"))
        return
    for item in sandbox_items:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def _sandbox_required() -> None:
    pytest.fail(f"DATAEX_REQUIRE_SANDBOX=1 but {_missing()}")


@pytest.fixture(scope="session")
def servers() -> NoReturn:
    pytest.fail("the sandbox tests need no servers", pytrace=False)
