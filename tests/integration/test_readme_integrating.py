"""The README's signing example (*Integrating*, *Signatures*), taken from the README as it is and
run against a real API process (`dataex serve api`, granian, on the test's database): a seller's
standing offer, a buyer's order and contract signature, the exchange's countersignature
checked, with `cryptography` and the standard library alone."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import time
from dataclasses import replace

import httpx

from tests.kit.api import bearer
from tests.kit.market import list_product
from tests.kit.processes import ROOT, clean_env, free_port


def signing_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Integrating\n")
    section = text[start : text.index("\n## ", start + 1)]
    blocks: list[str] = re.findall(
        r"^```python\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL
    )
    return blocks[0]


def start_api(settings, port, log):
    env = clean_env(
        **(replace(settings, http_port=port).to_env() | {"DATAEX_LOG_LEVEL": "warning"})
    )
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "exchange.cli", "serve", "api"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


@contextlib.asynccontextmanager
async def api_process(settings, log):
    port = free_port()
    process = start_api(settings, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(base_url=url) as http:
            while True:
                assert process.poll() is None, log.read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/health/live")).status_code == 200:
                        break
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_the_readmes_signing_example_runs_against_a_real_api(
    client, trade, settings, tmp_path
):
    product_id = await list_product(client, trade)
    code = signing_example()
    async with api_process(settings, tmp_path / "api.log") as url:
        env = clean_env(
            API=url, SELLER_TOKEN=trade["seller"], BUYER_TOKEN=trade["buyer"], PRODUCT_ID=product_id
        )
        # -I: isolated (no PYTHON* variables, no current folder on the path); cwd away from
        # the repository, so the example cannot lean on the project's code.
        ran = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-I", "-c", code], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    (contract_id,) = re.findall(r"^executed and verified: (\S+)$", ran.stdout, flags=re.MULTILINE)
    contract = await client.get(f"/v1/contracts/{contract_id}", headers=bearer(trade["buyer"]))
    body = contract.json()
    assert body["state"] == "executed"
    kinds = {s["party"]: s["kind"] for s in body["signatures"]}
    assert kinds == {
        "seller": "standing_offer",
        "buyer": "signature",
        "exchange": "countersignature",
    }
    # Signed with the keys the example made, not the ones the test kit registered.
    buyer_kid = next(s["kid"] for s in body["signatures"] if s["party"] == "buyer")
    assert buyer_kid != trade["signers"]["buyer"].kid
    keys = (await client.get("/v1/keys", headers=bearer(trade["buyer"]))).json()
    assert buyer_kid in {k["kid"] for k in keys}
