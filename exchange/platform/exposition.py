"""``GET /metrics``' text: every process's recorded metrics plus levels read at the scrape.

**Several processes.** Under `dataex up` the API runs as several granian workers beside the
relay, the settlement and delivery workers; each keeps its own metrics, and a scrape reaches
one API worker. So `dataex up` gives every part ``PROMETHEUS_MULTIPROC_DIR`` (``<state>/metrics``,
emptied before any part starts: `reset`), prometheus_client then writes each process's values to
files there, and the answering worker sums them all (`MultiProcessCollector`). Without the
variable (one process: the tests, a plain `dataex serve api`) this process's registry is served.

**Levels read at the scrape.** What PostgreSQL or JetStream already know (the review queue, the
outbox's backlog, the ledger's size, failures on record) is read when Prometheus asks, by the
room that owns it: the composition root hands each room's reader to the platform (`provide`),
and ``/metrics`` asks them all (`gauges`; one that fails is left out of that scrape). Such a
level is right whichever process answers and
needs no gauge in the files (a live gauge there would need its dead processes' files removed,
which `forget_dead` does for any that a part still defines).

This module defines no metric, so a process may import it without writing files.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from exchange.platform.context import Platform
from exchange.platform.logging import get_logger

log = get_logger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
GAUGE_TIMEOUT_SECONDS = 2.0
_SHARED_KEY = "metrics.gauges"

# What a room reads at each scrape: metric families of its levels.
Gauges = Callable[[Platform], Awaitable[list[Metric]]]


def reset(folder: Path) -> Path:
    """Make ``folder`` (0700) and remove every metrics file in it: the values of an earlier run
    belong to processes that are gone. Call it before any process that records starts."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    for file in folder.glob("*.db"):
        file.unlink(missing_ok=True)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead(folder: Path) -> list[int]:
    """Remove the live-gauge files of processes that are gone (prometheus_client's
    `mark_process_dead`); their counters and histograms stay, so totals never go back. Returns
    the pids forgotten. Called by `dataex up` when a part dies (granian's workers die with it,
    and the supervisor does not know their pids)."""
    dead: set[int] = set()
    for file in folder.glob("gauge_live*_*.db"):
        number = file.stem.rsplit("_", 1)[1]
        if number.isdigit() and not _alive(int(number)):
            dead.add(int(number))
    for pid in dead:
        mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
    return sorted(dead)


def provide(platform: Platform, room: str, gauges: Gauges) -> None:
    """Register a room's scrape-time reader (by the composition root, at start)."""
    platform.shared.setdefault(_SHARED_KEY, {})[room] = gauges


def provided(platform: Platform) -> dict[str, Gauges]:
    """The rooms' readers, by room."""
    return dict(platform.shared.get(_SHARED_KEY, {}))


async def gauges(platform: Platform, readers: Mapping[str, Gauges]) -> list[Metric]:
    """The levels of every reader, read now, side by side. A reader that fails or hangs (the
    database is away) is logged and left out: the rest of the scrape still answers, the
    processes' counts among it."""

    async def read(name: str, reader: Gauges) -> list[Metric]:
        try:
            return await asyncio.wait_for(reader(platform), GAUGE_TIMEOUT_SECONDS)
        except Exception as error:  # noqa: BLE001 - these levels missing, said in the log
            log.warning(
                "metrics_gauges_failed", reader=name, error=f"{type(error).__name__}: {error}"
            )
            return []

    found = await asyncio.gather(*(read(name, reader) for name, reader in readers.items()))
    return [family for families in found for family in families]


class _Families:
    """A one-scrape collector: the metric families read for this request."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families


def render(folder: Path | None, read_now: list[Metric]) -> bytes:
    """The text exposition (format 0.0.4) of the recorded metrics (every process's files in
    ``folder``, or this process's registry when None) and of ``read_now``. Reads files: call it
    off the event loop."""
    registry = CollectorRegistry(auto_describe=False)
    if folder is not None:
        MultiProcessCollector(registry, path=str(folder))  # type: ignore[no-untyped-call]
    else:
        registry.register(_Families(REGISTRY.collect()))
    registry.register(_Families(read_now))
    return generate_latest(registry)
