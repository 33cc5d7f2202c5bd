"""``GET /v1/disputes/{id}/bundle`` streams: a bundle of 40 MiB of evidence is answered with its
Content-Length in pieces of about a MiB while the API process's Python allocations grow by a
few MiB, not by the bundle's size; its bytes are what `write_bundle` writes for the same inputs,
and they verify. A client gone mid-stream stops the export: nothing left reading.

The app is called as an ASGI server calls it (in the test client's event loop, through its
portal): the test client itself would gather the whole body in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exchange.disputes import bundle, export
from exchange.disputes.service import DisputeService
from exchange.platform.signing import jwks
from tests.kit.api import bearer
from tests.kit.disputes import open_dispute, reserved_trade

MIB = 1 << 20


def asgi_get(
    client: Any, path: str, headers: dict[str, str], sink: Callable[[bytes], object],
    disconnect_after: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """GET ``path`` from the app the client serves, each piece of the body handed to ``sink``
    as it comes (kept nowhere else); the client disconnects once it has ``disconnect_after``
    bytes, if given. What was answered: status, headers, the pieces' count and the largest."""
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
        "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"host", b"testserver"),
                    *((k.lower().encode(), v.encode()) for k, v in headers.items())],
        "client": ("testclient", 50000), "server": ("testserver", 80), "extensions": {},
    }  # fmt: skip
    answer: dict[str, Any] = {"status": None, "headers": {}, "pieces": 0, "largest": 0, "bytes": 0}

    async def call() -> None:
        over = asyncio.Event()  # the answer is complete, or the client is gone
        asked = False

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await over.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                answer["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
                return
            body = message.get("body", b"")
            sink(body)
            answer["pieces"] += 1 if body else 0
            answer["largest"] = max(answer["largest"], len(body))
            answer["bytes"] += len(body)
            if not message.get("more_body", False) or (
                disconnect_after is not None and answer["bytes"] >= disconnect_after
            ):
                over.set()

        await client.app(scope, receive, send)

    client.blocking_portal.call(call)
    return answer


async def test_the_bundle_streams_in_bounded_memory_and_is_write_bundles_bytes(
    client, trade, admin_token, settings, pool, clock, monkeypatch, tmp_path: Path
):
    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock)
    dispute = (await open_dispute(client, trade["buyer"], trade_id)).json()
    base = f"/v1/disputes/{dispute['id']}"
    size = settings.dispute_evidence_max_bytes  # 10 MiB: four of them, within the 64 MiB
    for n in range(4):
        added = await client.post(
            f"{base}/evidence?type=data_sample&name=sample-{n}.bin", content=os.urandom(size),
            headers={**bearer(trade["buyer"]), "content-type": "application/octet-stream"},
        )  # fmt: skip
        assert added.status_code == 201, added.text

    # What the export is made of: the arguments of the bundle, and the export itself.
    arguments: list[dict[str, Any]] = []
    exports: list[export.BundleExport] = []
    prepare, exporting = bundle.prepare_bundle, DisputeService.bundle

    def prepare_spy(**kwargs: Any) -> bundle.PreparedBundle:
        arguments.append(kwargs)
        return prepare(**kwargs)

    async def bundle_spy(self: DisputeService, *args: Any) -> export.BundleExport:
        made = await exporting(self, *args)
        exports.append(made)
        return made

    monkeypatch.setattr(bundle, "prepare_bundle", prepare_spy)
    monkeypatch.setattr(DisputeService, "bundle", bundle_spy)

    path = tmp_path / "bundle.tar"
    with path.open("wb") as sink:
        tracemalloc.start()
        try:
            answer = asgi_get(client, f"{base}/bundle", bearer(trade["buyer"]), sink.write)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    length = path.stat().st_size
    print(
        f"bundle {length / MIB:.1f} MiB streamed in {answer['pieces']} pieces (largest"
        f" {answer['largest'] / MIB:.2f} MiB); peak Python allocations {peak / MIB:.1f} MiB"
    )
    assert answer["status"] == 200 and length > 4 * size
    # About 4 MiB measured (a chunk's buffer, the piece being made, the one being sent); the
    # bundle built in memory took more than its size (45 MiB for this one of 40).
    assert peak < 10 * MIB, f"{peak / MIB:.1f} MiB allocated for a {length / MIB:.1f} MiB bundle"
    assert answer["pieces"] > 1 and answer["largest"] <= 2 * bundle.CHUNK
    assert answer["headers"]["content-type"] == "application/x-tar"
    assert answer["headers"]["content-disposition"] == (
        f'attachment; filename="dispute-{dispute["id"]}.tar"'
    )
    assert int(answer["headers"]["content-length"]) == length

    # The very bytes write_bundle writes for the same inputs (here in memory), and they verify.
    assert len(arguments) == 1 and len(exports) == 1
    assert exports[0].finished.is_set()
    written = io.BytesIO()
    bundle.write_bundle(written, **arguments[0])
    assert int(answer["headers"]["content-length"]) == bundle.bundle_size(**arguments[0])
    with path.open("rb") as streamed:
        assert (
            hashlib.file_digest(streamed, "sha256").digest()
            == hashlib.sha256(written.getbuffer()).digest()
        )
    verified = bundle.verify_bundle(path, await jwks(pool))
    assert verified.dispute_id == dispute["id"] and verified.items == len(arguments[0]["items"])

    # A client gone after its first MiB: the export stops there, nothing left reading.
    gone = asgi_get(client, f"{base}/bundle", bearer(trade["buyer"]), lambda _: None,
                    disconnect_after=1)  # fmt: skip
    assert gone["status"] == 200 and 0 < gone["bytes"] < 3 * bundle.CHUNK < length
    assert len(exports) == 2 and await asyncio.to_thread(exports[1].finished.wait, 10)
