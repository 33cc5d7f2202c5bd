"""Test harness: real PostgreSQL and real NATS JetStream, started once per run when a test needs
them (tests/integration); tests/unit needs neither.

Everything tests share is in tests.kit: the fixtures (tests.kit.fixtures, a plugin registered
here) and the builders and documents the test modules import.
"""

pytest_plugins = ["tests.kit.fixtures"]


def pytest_collection_modifyitems(config, items):
    """The browser tests last: Playwright's sync API keeps an event loop running on the main
    thread for the rest of the session, where pytest-asyncio could run no async test after."""
    items.sort(key=lambda item: "tests/browser/" in str(item.path))
