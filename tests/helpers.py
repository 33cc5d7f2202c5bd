"""Small helpers for talking to the API in tests."""

from __future__ import annotations

from typing import Any

import nats

from exchange.identity.uscc import ALPHABET, check_character
from exchange.platform.bus import ensure_stream
from exchange.platform.db import connect, migrate
from exchange.platform.settings import Settings

VALID_USCC = [
    "91110000710925462X",
    "914403001922038216",
    "9144030071526726XG",
    "91440300708461136T",
    "91350100M000100Y43",
]


def make_uscc(seed: int) -> str:
    """A valid USCC distinct per seed (for registering many organisations)."""
    body = "91" + "310000" + "".join(ALPHABET[(seed // 31**i) % 31] for i in range(9))
    return body + check_character(body)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def org_body(
    uscc: str, roles: list[str] | None = None, name: str = "上海示例数据科技有限公司"
) -> dict[str, Any]:
    return {
        "name": name,
        "uscc": uscc,
        "roles": roles or ["seller", "buyer"],
        "region": "310000",
        "contact": {"name": "张三", "email": "zhang@example.cn", "phone": "+86 21 5555 0000"},
    }


async def register_org(
    client: Any, admin: str, uscc: str, roles: list[str] | None = None
) -> dict[str, Any]:
    response = await client.post(
        "/v1/organisations", json=org_body(uscc, roles), headers=bearer(admin)
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def issue_token(
    client: Any, admin: str, org_id: str, roles: list[str], days: int = 30
) -> str:
    response = await client.post(
        f"/v1/organisations/{org_id}/tokens",
        json={"name": "test", "roles": roles, "expires_in_days": days},
        headers=bearer(admin),
    )
    assert response.status_code == 201, response.text
    return response.json()["token"]  # type: ignore[no-any-return]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any DATAEX_* variable, plus ``extra``."""
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("DATAEX_")} | extra


def server_env(settings: Any, state_dir: Any) -> dict[str, str]:
    """Environment for a `dataex` subprocess using the test run's own database and stream."""
    return clean_env(
        DATAEX_STATE_DIR=str(state_dir),
        DATAEX_DATABASE_URL=settings.database_url,
        DATAEX_NATS_URL=settings.nats_url,
        DATAEX_STREAM_NAME=settings.stream_name,
        DATAEX_SUBJECT_PREFIX=settings.subject_prefix,
    )


def run_dataex(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 120
) -> Any:
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run(
        [sys.executable, "-m", "exchange.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=timeout,
        check=False,
        env=env,
    )


async def prepare_servers(settings: Settings) -> None:
    """Migrate the database and provision the stream (what `dataex up` does before it serves)."""
    assert settings.database_url and settings.nats_url
    conn = await connect(settings.database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    client = await nats.connect(settings.nats_url)
    try:
        await ensure_stream(client, settings)
    finally:
        await client.close()
