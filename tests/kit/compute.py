"""Sandbox grants for compute tests: a listed product delivered by sandbox, with a plan's
sandbox terms and a manual declaring identifiers, bounds and categories, and an active grant."""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from exchange import wiring
from exchange.compute import sandbox
from exchange.compute.runner import JobRunner
from exchange.delivery.files import stage_revision_files
from exchange.delivery.storage import LocalFolderStore
from exchange.platform.metering import Dimension
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing, load_master_key
from tests.kit.delivery import active_grant, executed, grant_service
from tests.kit.documents import metadata
from tests.kit.market import list_product

SANDBOX_PLAN: dict[str, Any] = {
    "id": "std", "name": "沙箱计算", "pricing": "subscription", "price_fen": 10_000,
    "free": False, "purposes": ["research"], "territory": ["CN"], "max_term_days": 365,
    "redistribution": False, "acceptance_days": 0,
    "sandbox": {
        "cpu_seconds": 2, "wall_seconds": 3, "memory_mb": 256, "pids": 16, "output_kb": 256,
        "k": 10, "epsilon_total": 1.0, "epsilon_per_job": 0.5, "max_rows": 10_000,
    },
}  # fmt: skip
FIELDS: list[dict[str, Any]] = [
    {"name": "id_number", "type": "string", "meaning": "身份证号", "sensitivity": "identifier"},
    {"name": "region", "type": "string", "meaning": "地区",
     "categories": ["north", "south", "east"]},
    {"name": "amount", "type": "float", "meaning": "金额",
     "bounds": {"lower": 0, "upper": 1000}},
]  # fmt: skip


def sandbox_document(files: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    document = metadata(delivery=["sandbox"], plans=[SANDBOX_PLAN])
    document["manual"]["fields"] = FIELDS
    document["manual"]["sample"] = {"rows": [{"region": "north", "amount": 12.5}]}
    if files:
        document["manual"]["files"] = files
    return document


async def sandbox_grant(
    client: Any, trade: dict[str, Any], pool: Any, clock: Any, settings: Any,
    files: list[dict[str, Any]] | None = None,
) -> uuid.UUID:  # fmt: skip
    """An active sandbox grant of a freshly listed product to the trade's buyer; its id."""
    product_id = await list_product(client, trade, sandbox_document(files))
    return await _grant(client, trade, pool, clock, settings, product_id)


async def _grant(
    client: Any, trade: dict[str, Any], pool: Any, clock: Any, settings: Any, product_id: str,
    dimensions: list[Dimension] | None = None,
) -> uuid.UUID:  # fmt: skip
    product = (await client.get(f"/v1/products/{product_id}", headers={
        "Authorization": f"Bearer {trade['seller']}"})).json()  # fmt: skip
    data = executed(
        product_id=product_id, product_code=product["product_code"] or "X", buyer_org=trade["buyer_org"],
        seller_org=trade["seller_org"], modes=("sandbox",), dimensions=dimensions,
    )  # fmt: skip
    return await active_grant(pool, grant_service(pool, clock, settings), data)


# --- data and a runner -------------------------------------------------------------------------

REGIONS = ("north", "south", "east")


def sales_csv(rows_per_region: int = 20) -> bytes:
    """Sales rows with an identifier column: 20 per region, amounts 10.0-59.5."""
    lines = ["id_number,region,amount"]
    for i in range(rows_per_region * len(REGIONS)):
        lines.append(f"1101011990{i:08d},{REGIONS[i % len(REGIONS)]},{10 + (i % 100) / 2}")
    return ("\n".join(lines) + "\n").encode()


def declared(name: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}


async def upload(client: Any, token: str, product_id: str, name: str, data: bytes) -> None:
    """The seller uploads one declared file of revision 1, in one chunk."""
    started = await client.post(
        f"/v1/products/{product_id}/revisions/1/files/{name}/uploads",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert started.status_code == 201, started.text
    upload_id = started.json()["id"]
    put = await client.put(
        f"/v1/uploads/{upload_id}/chunks/0", content=data,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream",
                 "X-Chunk-SHA256": hashlib.sha256(data).hexdigest()},
    )  # fmt: skip
    assert put.status_code == 200, put.text
    done = await client.post(
        f"/v1/uploads/{upload_id}/complete", headers={"Authorization": f"Bearer {token}"}
    )
    assert done.status_code == 200, done.text


async def grant_with_data(
    client: Any, trade: dict[str, Any], pool: Any, clock: Any, settings: Any,
    data: bytes | None = None, dimensions: list[Dimension] | None = None,
) -> uuid.UUID:  # fmt: skip
    """`sandbox_grant` over a stored ``sales.csv`` (``dimensions``: the grant's metering)."""
    data = data or sales_csv()
    product_id = await list_product(client, trade, sandbox_document([declared("sales.csv", data)]))
    await upload(client, trade["seller"], product_id, "sales.csv", data)
    return await _grant(client, trade, pool, clock, settings, product_id, dimensions)


def runner(pool: Any, clock: Any, settings: Settings, name: str | None = None) -> JobRunner:
    """A job runner in this process, as `dataex serve runner` makes one."""
    store = LocalFolderStore(settings.state_dir / "blobs", load_master_key(settings.state_dir))

    async def stage(product_id: uuid.UUID, revision: int, folder: Path) -> dict[str, Path]:
        return await stage_revision_files(pool, store, product_id, revision, folder)

    hooks = wiring.compute_hooks(grant_service(pool, clock, settings))
    keyring = KeyRing(load_master_key(settings.state_dir))
    return JobRunner(pool, clock, settings, hooks, stage, keyring, name=name)


@functools.cache
def _missing() -> str | None:
    problem = sandbox.platform_problem()
    if problem is not None:
        return f"the sandbox cannot run: {problem}"
    with tempfile.TemporaryDirectory(prefix="dataex-probe-") as folder:
        program = Path(folder) / "probe.py"
        program.write_text("pass\n")
        outcome = sandbox.run(program, {}, b"{}", sandbox.Limits(), Path(folder))
    if outcome.status != "exited" or outcome.exit_code != 0:
        return f"bubblewrap cannot make its namespaces here: {outcome.stderr_tail.strip()}"
    return None


def require_sandbox() -> None:
    """Skip the test without bubblewrap (one line saying why); fail instead under
    ``DATAEX_REQUIRE_SANDBOX=1``, as tests/sandbox does."""
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("DATAEX_REQUIRE_SANDBOX") == "1":
        pytest.fail(f"DATAEX_REQUIRE_SANDBOX=1 but {reason}", pytrace=False)
    pytest.skip(reason)
