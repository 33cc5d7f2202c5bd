"""The console in a real browser: Debian's Chromium, driven by pytest-playwright.

`console` starts `dataex serve api` (granian, as in production) on the run's database and
stream, once per session; each test gets an emptied database and a market of sellers and two
reviewers (`staff`). No browser is downloaded: Playwright drives ``/usr/bin/chromium``.

Without Chromium or a CJK font these tests skip, naming the Debian package to install; under
``DATAEX_REQUIRE_BROWSER=1`` (set by `.ci/run`) they fail instead, so CI cannot pass without
them having run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from exchange.platform.clock import SystemClock
from exchange.platform.settings import Settings
from tests.kit.market import open_market
from tests.kit.processes import ROOT, clean_env, free_port
from tests.kit.servers import TestServers, clean

CHROMIUM = Path(os.environ.get("DATAEX_CHROMIUM", "/usr/bin/chromium"))


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return "Debian's Chromium is not installed (apt-get install chromium)"
    fonts = shutil.which("fc-list")
    if fonts is None:
        return "fontconfig is not installed (apt-get install fonts-wqy-microhei)"
    listed = subprocess.run([fonts, ":lang=zh"], capture_output=True, text=True, check=False)
    if not listed.stdout.strip():
        return "no CJK font: Chinese would render as boxes (apt-get install fonts-wqy-microhei)"
    return None


def _stop_unless_available() -> None:
    """Skip (a developer's machine) or fail (CI) when the browser cannot run here."""
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("DATAEX_REQUIRE_BROWSER") == "1":
        pytest.fail(f"DATAEX_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _browser_available() -> None:
    # An autouse fixture, not markers added at collection: a `usefixtures` mark added then does
    # not reach the test's fixtures, so it would neither skip nor fail.
    _stop_unless_available()


@pytest.fixture(scope="session")
def browser_type_launch_args() -> dict[str, Any]:
    return {
        "executable_path": str(CHROMIUM),
        "headless": True,
        # As root Chromium refuses its own sandbox; the rest keeps it off this machine's closed
        # network (it would try Google's hosts at every start).
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    }


@pytest.fixture(scope="session")
def browser_context_args() -> dict[str, Any]:
    return {"viewport": {"width": 1280, "height": 900}, "locale": "zh-CN"}


@dataclass
class Console:
    url: str
    settings: Settings
    process: subprocess.Popen[bytes]
    log: Path

    def run(self, coroutine: Any) -> Any:
        """Run a coroutine of set-up against the live API (an httpx client at its address)."""
        return run_async(coroutine)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30)

    def sql(self, query: str, *args: Any) -> Any:
        async def run() -> Any:
            conn = await asyncpg.connect(self.settings.database_url)
            try:
                return await conn.fetch(query, *args)
            finally:
                await conn.close()

        return run_async(run())


def run_async(coroutine: Any) -> Any:
    """Run a coroutine to its end on a thread of its own: Playwright's sync API keeps an event
    loop running on the test's thread, where `asyncio.run` is refused."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture(scope="session")
def console_server(
    servers: TestServers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Console]:
    _stop_unless_available()
    state = tmp_path_factory.mktemp("console_state")
    settings = replace(servers.settings, state_dir=state, http_port=free_port(), peer_poll_ms=0)
    log = state / "api.log"
    env = clean_env(**(settings.to_env() | {"DATAEX_LOG_LEVEL": "warning"}))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "exchange.cli", "serve", "api"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{settings.http_port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the API exited; its log is {log}")
            try:
                if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the API is not live after 30 s; its log is {log}")
            time.sleep(0.1)
        yield Console(url=url, settings=settings, process=process, log=log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def console(console_server: Console) -> Console:
    """The console's API with emptied tables and stream for this test."""
    run_async(clean(console_server.settings))
    return console_server


@pytest.fixture
def staff(console: Console) -> dict[str, Any]:
    """Two sellers and two reviewers ("alice", "bob") and the operator's admin token."""

    async def build() -> dict[str, Any]:
        from exchange.identity.service import IdentityService
        from exchange.platform.audit import Actor
        from exchange.platform.db import create_pool

        assert console.settings.database_url
        pool = await create_pool(console.settings.database_url, max_size=2)
        try:
            issued, _ = await IdentityService(pool, SystemClock()).bootstrap(
                Actor.cli("test"), "测试交易所"
            )
            async with console.client() as client:
                market = await open_market(
                    client, issued.token, pool, SystemClock(), console.settings
                )
            return market | {"admin": issued.token}
        finally:
            await pool.close()

    market: dict[str, Any] = run_async(build())
    return market
