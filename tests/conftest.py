"""Test harness: real PostgreSQL and real NATS JetStream, started once per run when a test needs
them (tests/integration); tests/unit needs neither.

Everything tests share is in tests.kit: the fixtures (tests.kit.fixtures, a plugin registered
here) and the builders and documents the test modules import.
"""

pytest_plugins = ["tests.kit.fixtures"]
