"""`dataex up` heals itself: during a run of 2,000 orders, one process of the exchange is killed
with SIGKILL, and the exchange is ready again by itself (within 10 s for a part, 30 s for an
embedded server), every executed order's trade settles exactly once, and `dataex ledger verify`
passes. Killing every process at once (a power cut), then `dataex up`: ready at the first
attempt, nothing lost.

Each test runs a whole exchange on embedded servers of its own (in both CI targets): the run's
shared servers may not be killed.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nats
import nats.errors
import pytest

from exchange.platform.bus import connect_nats, split_credentials
from exchange.platform.embedded import EmbeddedNats
from exchange.platform.events import TradeExecuted
from settlement.consumer import DURABLE
from tests.kit.up import Exchange, place_orders, settle_check

pytestmark = [pytest.mark.faults, pytest.mark.system]

ORDERS = 2_000
FAULT_AFTER = 400  # accepted orders before the kill: the load runs on through the fault
PART_RECOVERY_S = 10.0
SERVER_RECOVERY_S = 30.0


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[Exchange]:
    running = Exchange(tmp_path / "state")
    print(f"\ncold start of dataex up: ready in {running.start():.2f} s")  # the baseline
    try:
        yield running
    finally:
        running.stop()


def kill_and_time(exchange: Exchange, target: str, within: float) -> dict[str, float]:
    """SIGKILL ``target``, then wait until the supervisor has started it again (or the server
    is back) and the exchange says ready; returns seconds from the kill."""
    pid = exchange.pid_of(target)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while time.monotonic() < killed_at + within:
        if target != "api-worker" and pid == _current_pid(exchange, target):
            time.sleep(0.05)  # not yet noticed
            continue
        if exchange.ready():
            seconds = time.monotonic() - killed_at
            print(f"\n{target} killed: ready again after {seconds:.2f} s")  # figures for -s
            return {"ready_after_s": seconds}
        time.sleep(0.05)
    raise AssertionError(f"not ready {within} s after killing {target}: {exchange.readiness()}")


def _current_pid(exchange: Exchange, target: str) -> int | None:
    try:
        return exchange.pid_of(target)
    except (OSError, ValueError, KeyError, TypeError):  # between death and restart
        return None


@pytest.mark.parametrize(
    "target", ["api", "api-worker", "relay", "settlement", "delivery", "gateway"]
)
async def test_a_part_killed_mid_run_is_restarted_and_nothing_is_lost(exchange, target):
    recovery: dict[str, float] = {}

    def fault() -> None:
        recovery.update(kill_and_time(exchange, target, PART_RECOVERY_S))

    assert exchange.token
    load = await place_orders(
        exchange.url, exchange.token, ORDERS, fault_after=FAULT_AFTER, fault=fault
    )
    assert recovery["ready_after_s"] <= PART_RECOVERY_S
    assert "HTTP 500" not in load.statuses, load.statuses
    await settle_check(exchange, load)
    status = exchange.supervisor()
    if target != "api-worker":  # granian replaces its own worker; the part lives on
        assert status["parts"][target]["restarts"] == 1
        assert status["parts"][target]["last_exit"] == -signal.SIGKILL
    assert all(part["state"] == "running" for part in status["parts"].values())


@pytest.mark.parametrize("server", ["postgres", "nats"])
async def test_an_embedded_server_killed_mid_run_is_restarted_and_nothing_is_lost(exchange, server):
    recovery: dict[str, float] = {}

    def fault() -> None:
        recovery.update(kill_and_time(exchange, server, SERVER_RECOVERY_S))

    assert exchange.token
    load = await place_orders(
        exchange.url, exchange.token, ORDERS, fault_after=FAULT_AFTER, fault=fault
    )
    assert recovery["ready_after_s"] <= SERVER_RECOVERY_S
    # While PostgreSQL is away an order is answered 503 (with Retry-After) or its connection
    # drops; never 500.
    assert "HTTP 500" not in load.statuses, load.statuses
    refused = {k for k in load.statuses if k.startswith("HTTP ") and k != "HTTP 201"}
    assert refused <= {"HTTP 503"}, load.statuses
    await settle_check(exchange, load)
    assert exchange.supervisor()["servers"][server]["restarts"] == 1


async def test_every_process_killed_at_once_then_up_is_ready_at_the_first_attempt(exchange):
    cut: dict[str, float] = {}

    def power_cut_and_up() -> None:
        cut["killed"] = exchange.kill_everything()
        cut["ready_after_s"] = exchange.start(ready_within=30.0)  # fails if `up` exits

    assert exchange.token
    load = await place_orders(
        exchange.url, exchange.token, ORDERS, fault_after=ORDERS // 2, fault=power_cut_and_up
    )
    assert cut["killed"] >= 8  # up, five parts (and granian's workers), PostgreSQL, NATS
    assert cut["ready_after_s"] < 30.0
    print(
        f"\n{cut['killed']:.0f} processes killed at once; up ready in {cut['ready_after_s']:.2f} s"
    )
    assert "HTTP 500" not in load.statuses, load.statuses
    await settle_check(exchange, load)


def test_a_second_up_on_the_same_state_folder_is_refused(exchange):
    second = Exchange(exchange.state)  # other ports, the same folder
    completed = subprocess.run(
        [sys.executable, "-m", "exchange.cli", "up"], env=second.env, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode != 0
    assert "another `dataex up`" in completed.stderr
    assert exchange.ready()  # and the first one's servers were left alone


RECONCILE_AFTER_S = 3


async def test_trades_a_foreign_client_took_from_the_settlement_consumer_still_settle(tmp_path):
    """A client with the exchange's NATS credentials pulls and acknowledges messages of the
    settlement workers' durable consumer during the run: the reconciler publishes those trades
    again once they are `RECONCILE_AFTER_S` overdue, and counts them."""
    exchange = Exchange(tmp_path / "state", DATAEX_RECONCILE_AFTER_SECONDS=str(RECONCILE_AFTER_S))
    exchange.start()
    stop = asyncio.Event()
    stolen: list[str] = []
    try:
        nats_url = EmbeddedNats(exchange.state).live_url()
        assert nats_url
        # Sealed: without the exchange's credentials (kept in its private state folder) the
        # server refuses the client outright; this one has them, as a leaked or buggy one would.
        servers, _credentials = split_credentials(nats_url)
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(servers[0], allow_reconnect=False, connect_timeout=3)
        client = await connect_nats(nats_url, name="a-foreign-client")
        thief = await client.jetstream().pull_subscribe_bind(DURABLE, stream="DATAEX")

        async def steal() -> None:
            while not stop.is_set():
                try:
                    messages = await thief.fetch(5, timeout=0.2)
                except TimeoutError:
                    continue
                for message in messages:
                    event = msgspec.json.decode(message.data, type=TradeExecuted)
                    stolen.append(event.data.trade_id)
                    await message.ack()

        stealing = asyncio.create_task(steal())
        assert exchange.token
        load = await place_orders(
            exchange.url, exchange.token, ORDERS, fault_after=ORDERS + 1, fault=lambda: None
        )
        stop.set()
        await stealing
        await client.close()
        # A republished message may be stolen again (the run outlasts the bound): each message
        # taken is republished once more, until the worker gets it.
        assert stolen
        await settle_check(exchange, load, within=RECONCILE_AFTER_S * 4 + 30)
        settlement = exchange.readiness()["settlement"]
        assert settlement["overdue"] == 0
        # Every message taken was republished (and, at a bound this short under full load, a
        # few trades that were only slow to settle: harmless, the consumer is idempotent).
        republished = [
            trade
            for line in (tmp_path / "up.err").read_text().splitlines()
            if '"trades_republished"' in line
            for trade in json.loads(line)["trade_ids"]
        ]
        assert collections.Counter(stolen) <= collections.Counter(republished)
        assert settlement["republished_total"] == len(republished) >= len(stolen)
        print(f"\n{len(stolen)} messages of {len(set(stolen))} of {load.accepted} trades stolen,"
              f" {len(republished)} republished, all settled")  # fmt: skip
    finally:
        stop.set()
        exchange.stop()
