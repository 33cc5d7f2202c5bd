"""Unit tests: the pure core, without PostgreSQL, NATS or a `dataex up`. The whole folder runs in
seconds (`uv run pytest tests/unit`).

A test here that asks for the run's servers (``servers``, or a fixture built on it such as
``settings``, ``pool``, ``client``) fails at once instead of starting them: it belongs in
tests/integration.
"""

from typing import NoReturn

import pytest


@pytest.fixture(scope="session")
def servers() -> NoReturn:
    pytest.fail("a unit test needs no servers: move this test to tests/integration", pytrace=False)
