"""``/health/live`` and ``/health/ready``.

Ready only when PostgreSQL, the migrations, NATS and JetStream are all good.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec

from exchange.platform.auth import PUBLIC
from exchange.platform.context import Platform
from exchange.platform.db import migration_status

CHECK_TIMEOUT = 2.0


class Check(msgspec.Struct):
    ok: bool
    detail: str


class PartHeartbeat(msgspec.Struct):
    part: str
    instance: str
    pid: int
    seen_seconds_ago: float


class Readiness(msgspec.Struct):
    status: str
    checks: dict[str, Check]
    parts: list[PartHeartbeat]


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
    ready = all(check.ok for check in results.values())
    return Readiness(status="ready" if ready else "not_ready", checks=results, parts=parts)


class HealthController(Controller):
    path = "/health"
    tags = ["health"]
    opt = PUBLIC

    @get("/live", operation_id="live", opt=PUBLIC)
    async def live(self) -> dict[str, str]:
        """The process answers. Says nothing about its dependencies."""
        return {"status": "live"}

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
