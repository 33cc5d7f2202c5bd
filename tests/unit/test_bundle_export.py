"""A bundle streamed (`exchange.disputes.export`): the very bytes `write_bundle` writes, in
pieces of about a chunk, each read in a thread when asked for; an item changed on disk after
the check cuts the stream short and is logged; a stream stopped early (the client gone) stops
reading at once, nothing left running or open."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import tarfile
import threading
import uuid
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from exchange.disputes import export
from exchange.disputes.bundle import (
    CHUNK,
    LEDGER_NAME,
    MANIFEST_JWS_TYPE,
    MANIFEST_NAME,
    README_NAME,
    SIGNATURE_NAME,
    BundleInvalid,
    PreparedBundle,
    item_path,
    prepare_bundle,
)
from tests.unit.test_bundle import EXCHANGE, EXPORTED_AT, FILES, Case, build_case

MIB = 1 << 20
# Items of several chunks, one not a whole number of them: the stream has many pieces.
LARGE = [
    *FILES,
    ("data_sample", "big-1.bin", "application/octet-stream", "buyer", bytes(range(256)) * 14_000),
    ("data_sample", "big-2.bin", "application/octet-stream", "seller", b"\x07" * (3 * MIB + 17)),
]  # fmt: skip


@pytest.fixture
def large(tmp_path: Path) -> Case:
    return build_case(tmp_path, LARGE)


def prepared(case: Case) -> PreparedBundle:
    return prepare_bundle(
        exchange=EXCHANGE, dispute=case.dispute, items=case.items, proofs=case.proofs(),
        sign=functools.partial(case.key.sign_detached, typ=MANIFEST_JWS_TYPE),
        exported_at=EXPORTED_AT,
    )  # fmt: skip


def new_export(case: Case) -> export.BundleExport:
    return export.BundleExport(prepared(case), uuid.UUID(case.dispute["id"]))


async def test_the_stream_is_what_write_bundle_writes_in_pieces_of_about_a_chunk(large):
    await export.check(large.items)
    streamed = new_export(large)
    pieces = [piece async for piece in streamed]
    assert b"".join(pieces) == large.write()
    assert streamed.size == len(large.write())
    assert len(pieces) > 5 and max(map(len, pieces)) <= 2 * CHUNK
    assert streamed.finished.is_set()
    with pytest.raises(RuntimeError, match="streams once"):
        aiter(streamed)


async def test_check_names_an_item_missing_changed_shorter_or_longer(large):
    item = large.items[5]
    content = item.path.read_bytes()
    for damage, expected in (
        (content[:-1] + b"!", "the stored file no longer has its sha256"),
        (content[:-1], f"the stored file's size is not {item.size} bytes"),
        (content + b"!", f"the stored file's size is not {item.size} bytes"),
        (None, "the stored file cannot be read: No such file or directory"),
    ):
        if damage is None:
            item.path.unlink()
        else:
            item.path.write_bytes(damage)
        with pytest.raises(BundleInvalid, match=rf"^item 5 \(big-1.bin\): {expected}"):
            await export.check(large.items)


async def test_a_file_changed_after_the_check_cuts_the_stream_short_and_is_logged(large):
    await export.check(large.items)
    streamed = new_export(large)
    item = large.items[5]
    content = item.path.read_bytes()
    item.path.write_bytes(content[: CHUNK + 5] + b"!" + content[CHUNK + 6 :])
    received = 0
    with capture_logs() as logs, pytest.raises(BundleInvalid, match=r"item 5 \(big-1.bin\)"):
        async for piece in streamed:
            received += len(piece)
    assert received < streamed.size
    assert [(e["event"], e["during"], e["dispute_id"]) for e in logs] == [
        ("dispute_evidence_damaged", "streaming", large.dispute["id"])
    ]
    assert streamed.finished.is_set()


async def test_a_client_gone_between_pieces_stops_the_stream(large):
    """Litestar's streaming answer is cancelled while it sends a piece (the generator waits at
    its yield), then closes the export in its background task."""
    streamed = new_export(large)
    stream = aiter(streamed)
    first = await anext(stream)
    assert 0 < len(first) < streamed.size
    assert not streamed.finished.is_set()  # a file may be open: the first item's
    await streamed.aclose()
    assert streamed.finished.is_set()


async def test_a_client_gone_while_a_piece_is_read_stops_after_that_piece(large, monkeypatch):
    """Cancelled while a piece is being made in its thread: that piece is the last one read,
    nothing more is asked of the threads, and the archive is closed once it is made."""
    reading, release = threading.Event(), threading.Event()
    taken: list[int] = []
    export_take = export._take

    def slow_take(pieces, limit):
        taken.append(limit)
        if len(taken) == 3:
            reading.set()
            assert release.wait(10)
        return export_take(pieces, limit)

    monkeypatch.setattr(export, "_take", slow_take)
    streamed = new_export(large)
    received: list[bytes] = []

    async def client() -> None:
        async for piece in streamed:
            received.append(piece)

    task = asyncio.create_task(client())
    assert await asyncio.to_thread(reading.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(received) == 2 and not streamed.finished.is_set()  # the third is being read
    release.set()
    assert await asyncio.to_thread(streamed.finished.wait, 10)
    await streamed.aclose()  # the response's background task: nothing more to do
    assert len(taken) == 3


async def test_an_export_never_streamed_is_closed_all_the_same(tmp_path):
    streamed = new_export(build_case(tmp_path))
    await streamed.aclose()
    assert streamed.finished.is_set()
    with pytest.raises(RuntimeError, match="streams once"):
        aiter(streamed)


def test_the_pieces_are_a_tar_that_python_reads_back(large):
    """`PreparedBundle.pieces` read by an independent reader (Python's `tarfile`): every member
    in order, each item's bytes its file's, the archive whole records, its length the size
    announced."""
    data = b"".join(bytes(piece) for piece in prepared(large).pieces())
    assert len(data) == prepared(large).size and len(data) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        members = archive.getmembers()
        names = [m.name for m in members]
        assert names[:4] == [README_NAME, MANIFEST_NAME, SIGNATURE_NAME, LEDGER_NAME]
        assert names[4:] == [item_path(i.index, i.sha256) for i in large.items]
        for item, member in zip(large.items, members[4:], strict=True):
            body = archive.extractfile(member)
            assert body is not None
            content = body.read()
            assert content == item.path.read_bytes()
            assert hashlib.sha256(content).hexdigest() == item.sha256
