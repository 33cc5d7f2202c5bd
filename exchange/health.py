"""``/health/live`` and ``/health/ready``.

Ready only when PostgreSQL, the migrations, NATS and JetStream are all good and, under
`dataex up`, every part runs: the supervisor's status file says which run, and a worker counts
only once its new process has beaten its heartbeat. Beside the checks, ``settlement`` shows
what the settlement room's reconciler is repairing (`exchange.platform.status`): overdue
trades are being republished, so they do not make the exchange "not ready".
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import msgspec
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exchange.platform import exposition
from exchange.platform.auth import PUBLIC, requires
from exchange.platform.context import Platform
from exchange.platform.db import migration_status
from exchange.platform.heartbeat import INTERVAL_SECONDS
from exchange.platform.logging import get_logger
from exchange.platform.outbox import backlog
from exchange.platform.status import SettlementStatus, report
from exchange.platform.supervision import SupervisorStatus, read_status

log = get_logger(__name__)
CHECK_TIMEOUT = 2.0
PROMETHEUS_TEXT = "text/plain; version=0.0.4"  # litestar adds the charset
HEARTBEAT_PARTS = frozenset({"relay", "settlement", "delivery"})  # the others have no beat


class Check(msgspec.Struct):
    ok: bool
    detail: str


class PartHeartbeat(msgspec.Struct):
    part: str
    instance: str
    pid: int
    seen_seconds_ago: float


class Liveness(msgspec.Struct, frozen=True):
    status: Literal["live"]


LIVE = Liveness(status="live")


class Readiness(msgspec.Struct, omit_defaults=True):
    status: Literal["ready", "not_ready"]
    checks: dict[str, Check]
    parts: list[PartHeartbeat]
    supervisor: SupervisorStatus | None = None  # under `dataex up`: its parts and servers
    settlement: SettlementStatus | None = None


async def _check(name: str, probe: Any) -> tuple[str, Check]:
    try:
        detail = await asyncio.wait_for(probe, CHECK_TIMEOUT)
    except TimeoutError:
        return name, Check(ok=False, detail=f"no answer within {CHECK_TIMEOUT:.0f}s")
    except Exception as error:  # noqa: BLE001 - any failure means "not ready", said in the body
        return name, Check(ok=False, detail=f"{type(error).__name__}: {error}")
    if isinstance(detail, Check):
        return name, detail
    return name, Check(ok=True, detail=str(detail))


async def readiness(platform: Platform) -> Readiness:
    async def postgres() -> str:
        version = await platform.pool.fetchval("SHOW server_version")
        return f"PostgreSQL {version}"

    async def migrations() -> Check:
        async with platform.pool.acquire() as conn:
            ok, detail = await migration_status(conn)
        return Check(ok=ok, detail=detail)

    async def nats() -> Check:
        connected = platform.nats.is_connected
        return Check(
            ok=connected,
            # host:port only, never the URL's user and password
            detail=f"{url.hostname}:{url.port}"
            if connected and (url := platform.nats.connected_url)
            else "not connected",
        )

    async def jetstream() -> str:
        info = await platform.nats.jetstream().stream_info(platform.settings.stream_name)
        return f"stream {info.config.name}: {info.state.messages} messages"

    results = dict(
        await asyncio.gather(
            _check("postgres", postgres()),
            _check("migrations", migrations()),
            _check("nats", nats()),
            _check("jetstream", jetstream()),
        )
    )
    parts: list[PartHeartbeat] = []
    if results["postgres"].ok:
        rows = (
            await platform.pool.fetch(
                "SELECT part, instance, pid, extract(epoch FROM now() - seen_at)::float8 AS ago"
                " FROM process_heartbeats WHERE seen_at > now() - interval '1 minute'"
                " ORDER BY part, instance"
            )
            if results["migrations"].ok
            else []
        )
        parts = [
            PartHeartbeat(
                part=r["part"],
                instance=r["instance"],
                pid=r["pid"],
                seen_seconds_ago=round(r["ago"], 1),
            )
            for r in rows
        ]
    settlement = None
    if results["migrations"].ok:
        try:
            settlement = await asyncio.wait_for(report(platform, "settlement"), CHECK_TIMEOUT)
        except Exception as error:  # noqa: BLE001 - shown as absent; readiness does not hang on it
            log.warning("settlement_status_failed", error=f"{type(error).__name__}: {error}")
    supervisor = None
    if platform.settings.supervisor_status is not None:
        supervisor = read_status(platform.settings.supervisor_status)
        results["parts"] = _supervised(supervisor, parts if results["postgres"].ok else None)
    ready = all(check.ok for check in results.values())
    return Readiness(
        status="ready" if ready else "not_ready",
        checks=results,
        parts=parts,
        supervisor=supervisor,
        settlement=settlement,
    )


def _supervised(status: SupervisorStatus | None, beats: list[PartHeartbeat] | None) -> Check:
    """Whether every part `dataex up` runs is up; ``beats`` None when they cannot be read."""
    if status is None:
        return Check(ok=False, detail="no status from `dataex up` (its status file is unreadable)")
    down = status.down()
    if beats is not None:
        fresh = {(b.part, b.pid) for b in beats if b.seen_seconds_ago <= 2 * INTERVAL_SECONDS}
        down += [
            f"{name} starting"
            for name, part in status.parts.items()
            if name in HEARTBEAT_PARTS and part.state == "running" and (name, part.pid) not in fresh
        ]
    if down:
        return Check(ok=False, detail="; ".join(down))
    return Check(ok=True, detail=f"{len(status.parts)} parts running")


class HealthController(Controller):
    path = "/health"
    tags = ["health"]
    opt = PUBLIC

    @get("/live", operation_id="live", opt=PUBLIC)
    async def live(self) -> Liveness:
        """The process answers. Says nothing about its dependencies."""
        return LIVE

    @get(
        "/ready",
        operation_id="ready",
        opt=PUBLIC,
        responses={503: ResponseSpec(Readiness, generate_examples=False, description="Not ready")},
    )
    async def ready(self, platform: NamedDependency[Platform]) -> Response[Readiness]:
        """200 when PostgreSQL, migrations, NATS and JetStream are good; else 503 saying which."""
        result = await readiness(platform)
        return Response(result, status_code=200 if result.status == "ready" else 503)


async def metric_families(platform: Platform) -> list[Metric]:
    """What an operator graphs and alerts on that is read fresh at each scrape (one process of
    many answers it, so none of this is kept in one process's memory): the outbox's backlog,
    the settlement reconciler's work, each room's levels (`exchange.platform.exposition`) and,
    under `dataex up`, the supervisor's restarts. What cannot be read now (the database is
    away) is left out, not made an error: the processes' counts still answer."""
    readers = {
        "outbox": _outbox_levels,
        "reconciler": _reconciler_levels,
        "compute": _compute_levels,
    }
    families = await exposition.gauges(platform, readers | exposition.provided(platform))
    return families + _supervisor_levels(platform)


async def _outbox_levels(platform: Platform) -> list[Metric]:
    pending, oldest = await backlog(platform.pool)
    outbox_pending = GaugeMetricFamily(
        "dataex_outbox_pending", "Events written to the outbox and not yet published"
    )
    outbox_pending.add_metric([], pending)
    outbox_oldest = GaugeMetricFamily(
        "dataex_outbox_oldest_pending_age_seconds",
        "How long the oldest unpublished outbox event has waited (0: none waits)",
    )
    outbox_oldest.add_metric([], oldest)
    return [outbox_pending, outbox_oldest]


async def _reconciler_levels(platform: Platform) -> list[Metric]:
    settlement = await report(platform, "settlement")
    if settlement is None:
        return []
    republished = CounterMetricFamily(
        "dataex_settlement_trades_republished",
        "Executed trades' events the reconciler published again (no outcome past the bound)",
    )
    republished.add_metric([], settlement.republished_total)
    overdue = GaugeMetricFamily(
        "dataex_settlement_trades_overdue",
        "Executed trades without a settlement outcome past the bound, now",
    )
    overdue.add_metric([], settlement.overdue)
    return [republished, overdue]


async def _compute_levels(platform: Platform) -> list[Metric]:
    jobs = await report(platform, "compute")
    if jobs is None:
        return []
    live = GaugeMetricFamily(
        "dataex_compute_jobs",
        "Compute jobs not yet ended, by state (queued: the work queue's length)",
        labels=["state"],
    )
    for state in ("queued", "running", "checking_output"):
        live.add_metric([state], getattr(jobs, state))
    return [live]


def _supervisor_levels(platform: Platform) -> list[Metric]:
    if platform.settings.supervisor_status is None:
        return []
    status = read_status(platform.settings.supervisor_status)
    if status is None:
        return []
    restarts = CounterMetricFamily(
        "dataex_restarts", "Restarts by `dataex up` since it started", labels=["process"]
    )
    running = GaugeMetricFamily(
        "dataex_running", "1 when the part or server runs, else 0", labels=["process"]
    )
    for name, part in status.parts.items():
        restarts.add_metric([name], part.restarts)
        running.add_metric([name], 1 if part.state == "running" else 0)
    for name, server in status.servers.items():
        restarts.add_metric([name], server.restarts)
        running.add_metric([name], 0 if server.state == "restarting" else 1)
    return [restarts, running]


class MetricsController(Controller):
    path = "/metrics"
    tags = ["health"]

    @get(
        "/",
        operation_id="metrics",
        opt=requires("reviewer", "admin"),
        media_type=PROMETHEUS_TEXT,
    )
    async def metrics(self, platform: NamedDependency[Platform]) -> str:
        """Prometheus text exposition (version 0.0.4) for staff and their scrapers (a bearer
        token of a reviewer or admin): what every process of the exchange counted (HTTP
        requests, orders, policy decisions, the relay's and consumers' work), summed over the
        processes under `dataex up`, and the levels read now (review queue, outbox backlog,
        ledger, settlement failures, the reconciler, restarts). The README lists them."""
        read_now = await metric_families(platform)
        text = await asyncio.to_thread(exposition.render, platform.settings.metrics_dir, read_now)
        return text.decode()
