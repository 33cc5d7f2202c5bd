"""Liveness and readiness."""

from typing import Any

from litestar import Request, post
from litestar.testing import AsyncTestClient

from exchange.app import create_app
from exchange.platform.auth import PUBLIC


async def test_live_needs_nothing(client):
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "live"}


async def test_ready_when_postgres_migrations_and_jetstream_are_good(client, settings):
    response = await client.get("/health/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"postgres", "migrations", "nats", "jetstream"}
    assert all(check["ok"] for check in body["checks"].values())
    assert settings.stream_name in body["checks"]["jetstream"]["detail"]
    assert [part["part"] for part in body["parts"]] == ["api"]


async def test_not_ready_says_which_part_failed(settings, clock):
    # Close NATS from inside the app's own event loop, as a lost connection would.
    @post("/test/lose-nats", opt=PUBLIC, status_code=204)
    async def lose_nats(request: Request[Any, Any, Any]) -> None:
        await request.app.state.platform.nats.close()

    app = create_app(settings, clock=clock)
    app.register(lose_nats)
    async with AsyncTestClient(app=app) as client:
        assert (await client.post("/test/lose-nats")).status_code == 204
        response = await client.get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["postgres"]["ok"] is True
    assert body["checks"]["migrations"]["ok"] is True
    assert body["checks"]["nats"] == {"ok": False, "detail": "not connected"}
    assert body["checks"]["jetstream"]["ok"] is False


async def test_not_ready_when_a_migration_is_pending(client, pool):
    await pool.execute("SET session_replication_role = replica")
    await pool.execute("DELETE FROM schema_migrations WHERE version = 1")
    try:
        response = await client.get("/health/ready")
        assert response.status_code == 503
        assert response.json()["checks"]["migrations"] == {
            "ok": False,
            "detail": "pending: 0001_platform",
        }
    finally:
        from exchange.platform.db import load_migrations

        first = load_migrations()[0]
        await pool.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            first.version,
            first.name,
            first.checksum,
        )
