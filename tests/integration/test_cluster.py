"""A 3-node JetStream cluster on loopback (three `nats-server` processes, file storage,
``sync_interval: always``, the stream and the settlement consumer with 3 replicas): two relays
and two settlement workers run against it, the node leading the stream is killed mid-run, and the
run finishes on the two left. Nothing is lost or doubled: the same invariants as the fault tests.
The cluster is this test's own in both CI targets; PostgreSQL is the run's."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from exchange.platform.bus import connect_nats, ensure_stream
from exchange.platform.embedded import EmbeddedNats, NatsRoutes, _nats_bin
from exchange.platform.settings import Settings
from tests.kit.processes import ROOT, free_port
from tests.kit.settlement import (
    TRADES,
    assert_exactly_once,
    enqueue_executed,
    kill,
    log_events,
    seeded,
    settled,
    spawn,
    wait_published,
    wait_until,
)

pytestmark = pytest.mark.faults

NODES = 3
FORM_WITHIN = 30.0  # seconds for the nodes to elect a JetStream meta leader


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, EmbeddedNats]]:
    """Three clustered nodes by server name, each with its own store, on free loopback ports."""
    routes = [free_port() for _ in range(NODES)]
    nodes = {
        f"n{i + 1}": EmbeddedNats(
            tmp_path,
            folder=f"nats-n{i + 1}",
            server_name=f"n{i + 1}",
            port=free_port(),
            cluster=NatsRoutes("dataex", routes[i], tuple(p for p in routes if p != routes[i])),
        )
        for i in range(NODES)
    }
    try:
        for node in nodes.values():
            node.start()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop(grace=2.0)


async def provision(settings: Settings) -> str:
    """`ensure_stream` once the cluster has a meta leader (until then JetStream says 503)."""
    deadline = time.monotonic() + FORM_WITHIN
    while True:
        client = await connect_nats(settings.nats_url or "", name="dataex-test")
        try:
            outcome = await ensure_stream(client, settings)
        except Exception:
            if time.monotonic() > deadline:
                raise
        else:
            return outcome
        finally:
            await client.close()
        await asyncio.sleep(0.25)


async def replicated(settings: Settings) -> Any:
    """The stream's info once it has a leader and both followers are current."""
    deadline = time.monotonic() + FORM_WITHIN
    while True:
        info = await stream_info(settings)
        peers = info.cluster.replicas or []
        if info.cluster.leader and len(peers) == NODES - 1 and all(p.current for p in peers):
            return info
        assert time.monotonic() < deadline, f"stream not replicated: {info.cluster}"
        await asyncio.sleep(0.1)


async def stream_info(settings: Settings) -> Any:
    client = await connect_nats(settings.nats_url or "", name="dataex-test")
    try:
        return await client.jetstream().stream_info(settings.stream_name)
    finally:
        await client.close()


async def test_a_stream_leader_killed_mid_run_on_a_3_node_cluster_loses_and_doubles_nothing(
    settings, pool, cluster, tmp_path
):
    on_cluster = replace(
        settings,
        nats_url=",".join(str(node.client_url) for node in cluster.values()),
        stream_replicas=3,
    )
    # A stream made before the setting (one replica) is moved to three by `dataex migrate`.
    assert await provision(replace(on_cluster, stream_replicas=None)) == "created"
    assert (await stream_info(on_cluster)).config.num_replicas == 1
    assert await provision(replace(on_cluster, stream_replicas=None)) == "unchanged"
    assert await provision(on_cluster) == "updated"
    info = await replicated(on_cluster)
    assert info.config.num_replicas == 3
    leader = info.cluster.leader
    assert leader in cluster

    log = tmp_path / "parts.log"
    events = await seeded(on_cluster, pool)
    half = TRADES // 2
    await enqueue_executed(on_cluster, pool, events[:half])
    parts = [
        spawn(part, on_cluster, log) for part in ("relay", "relay", "settlement", "settlement")
    ]
    try:
        await wait_until(pool, 200)
        cluster[leader].stop(kill=True)  # SIGKILL: the stream's leader, mid-run
        at_kill = await settled(pool)
        await enqueue_executed(on_cluster, pool, events[half:])
        started = time.monotonic()
        await wait_until(pool, TRADES)
        finished = time.monotonic() - started
        await asyncio.sleep(1)  # anything still redelivered must change nothing
        await wait_published(pool)
    finally:
        for part in parts:
            kill(part, signal.SIGTERM)

    assert at_kill < TRADES
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
    after = await stream_info(on_cluster)
    assert after.cluster.leader not in (None, leader)  # a survivor leads now
    # Each trade's dx.trade.executed and dx.trade.reserved, once: re-publishes across the
    # failover deduplicated.
    assert after.state.messages == 2 * TRADES
    await assert_exactly_once(on_cluster, pool, events)
    print(f"leader {leader} killed at {at_kill} settled; the rest settled in {finished:.1f}s on"
          f" {after.cluster.leader}; nats_disconnected logged"
          f" {log_events(log, 'nats_disconnected')}x")  # fmt: skip


@pytest.mark.parametrize("node", ["node-1.conf", "node-2.conf", "node-3.conf"])
def test_the_shipped_cluster_configuration_is_accepted_by_nats_server(node):
    conf = ROOT / "ops" / "nats-cluster" / node
    text = conf.read_text()
    assert "sync_interval: always" in text
    result = subprocess.run(
        [str(_nats_bin()), "-t", "-c", str(conf)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
