"""Which database errors mean "PostgreSQL is away just now" (503, retried) rather than a bug."""

from __future__ import annotations

import asyncpg

from exchange.platform.db import database_unreachable, is_unavailable


def test_a_connection_left_mid_operation_by_a_dead_server_is_unavailable():
    # What asyncpg raised for one order in a run where PostgreSQL was killed (test_self_healing)
    broken = asyncpg.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"
    )
    assert is_unavailable(broken) and database_unreachable(broken)


def test_other_client_errors_are_bugs_not_outages():
    assert not is_unavailable(asyncpg.InternalClientError("unexpected codec state"))
    assert not is_unavailable(asyncpg.InterfaceError("cannot perform operation: another op"))
    assert is_unavailable(asyncpg.InterfaceError("connection is closed"))
    assert is_unavailable(asyncpg.exceptions.CannotConnectNowError("starting up"))
    assert not database_unreachable(ConnectionRefusedError())  # not raised inside asyncpg
