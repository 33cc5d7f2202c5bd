"""Stored files: AES-256-GCM records that cannot be altered, swapped, moved or cut off unnoticed;
ranged reads that decrypt only the records they cover; staging that never stores a bad file.

Small records (64 bytes) and chunks (two records) keep the files tiny; the layout is the one
a 1 MiB record uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.delivery.storage import (
    OVERHEAD,
    ChunkCorrupt,
    ChunksMissing,
    ChunkWrongSize,
    FileDigestMismatch,
    LocalFolderStore,
    Sealer,
    StagedUpload,
    StoredBlob,
    StoredFileDamaged,
    new_data_key,
    sealed_size,
    unwrap_key,
    wrap_key,
)

RECORD = 64
CHUNK = 2 * RECORD
MASTER = bytes(range(32))
DATA = hashlib.shake_256(b"dataex").digest(5 * CHUNK + 37)  # 5 full chunks and a short one
SHA = hashlib.sha256(DATA).hexdigest()


async def streamed(data: bytes, piece: int = 7) -> AsyncIterator[bytes]:
    """A request body as the server hands it over: small pieces of any length."""
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


def chunk_of(data: bytes, index: int) -> bytes:
    return data[index * CHUNK : (index + 1) * CHUNK]


def upload_of(data: bytes = DATA) -> StagedUpload:
    return StagedUpload(uuid.uuid4(), hashlib.sha256(data).hexdigest(), len(data), CHUNK)


async def read_all(store: LocalFolderStore, blob: StoredBlob, start: int, end: int) -> bytes:
    return b"".join([piece async for piece in store.read(blob, start, end)])


async def stored(store: LocalFolderStore, data: bytes = DATA) -> StoredBlob:
    upload = upload_of(data)
    for index in reversed(range(upload.chunks)):  # any order will do
        chunk = chunk_of(data, index)
        await store.put_chunk(upload, index, streamed(chunk), hashlib.sha256(chunk).hexdigest())
    blob = await store.commit(upload)
    await store.discard(upload.id)
    return blob


@pytest.fixture
def store(tmp_path: Path) -> LocalFolderStore:
    return LocalFolderStore(tmp_path / "blobs", MASTER, record_bytes=RECORD)


def object_path(store: LocalFolderStore, blob: StoredBlob) -> Path:
    (path,) = (store.root / "objects").rglob(f"{blob.sha256}.*")
    return path


# --- records ------------------------------------------------------------------------------------


def test_a_record_opens_to_what_was_sealed_and_only_in_its_place():
    key = new_data_key()
    sealer = Sealer(key, SHA, len(DATA), RECORD)
    records = [sealer.seal(i, DATA[i * RECORD : (i + 1) * RECORD]) for i in range(3)]
    assert [sealer.open(i, r) for i, r in enumerate(records)] == [
        DATA[i * RECORD : (i + 1) * RECORD] for i in range(3)
    ]
    with pytest.raises(StoredFileDamaged, match=r"record 1 .* fails its authentication tag"):
        sealer.open(1, records[0])  # swapped
    other_file = Sealer(key, hashlib.sha256(b"other").hexdigest(), len(DATA), RECORD)
    with pytest.raises(StoredFileDamaged):
        other_file.open(0, records[0])  # moved to another file under the same key


@pytest.mark.parametrize("where", [0, 5, 12, 12 + RECORD // 2, 12 + RECORD, 12 + RECORD + 15])
def test_any_altered_byte_of_a_record_fails_its_tag(where):
    sealer = Sealer(new_data_key(), SHA, len(DATA), RECORD)
    record = bytearray(sealer.seal(0, DATA[:RECORD]))
    record[where] ^= 0x01
    with pytest.raises(StoredFileDamaged):
        sealer.open(0, bytes(record))


def test_a_data_key_opens_only_under_its_master_key_and_for_its_file():
    key = new_data_key()
    wrapped = wrap_key(MASTER, SHA, key)
    assert unwrap_key(MASTER, SHA, wrapped) == key
    with pytest.raises(StoredFileDamaged, match="another master key"):
        unwrap_key(os.urandom(32), SHA, wrapped)
    with pytest.raises(StoredFileDamaged):
        unwrap_key(MASTER, hashlib.sha256(b"other").hexdigest(), wrapped)


def test_the_stored_size_is_the_plaintext_and_28_bytes_a_record():
    assert sealed_size(0, RECORD) == 0
    assert sealed_size(RECORD, RECORD) == RECORD + OVERHEAD
    assert sealed_size(RECORD + 1, RECORD) == RECORD + 1 + 2 * OVERHEAD


# --- staging and commit -------------------------------------------------------------------------


async def test_a_file_staged_in_any_order_reads_back_whole(store):
    blob = await stored(store)
    assert blob.sha256 == SHA and blob.size_bytes == len(DATA) and blob.chunk_bytes == RECORD
    assert await read_all(store, blob, 0, len(DATA)) == DATA
    assert object_path(store, blob).stat().st_size == sealed_size(len(DATA), RECORD)
    assert not (store.root / "staging").exists() or not any((store.root / "staging").iterdir())
    assert DATA[:RECORD] not in object_path(store, blob).read_bytes()  # encrypted at rest


async def test_a_corrupt_chunk_is_refused_and_the_good_copy_kept(store):
    upload = upload_of()
    good = chunk_of(DATA, 1)
    await store.put_chunk(upload, 1, streamed(good), hashlib.sha256(good).hexdigest())
    flipped = bytes([good[0] ^ 0xFF]) + good[1:]
    with pytest.raises(ChunkCorrupt) as refused:
        await store.put_chunk(upload, 1, streamed(flipped), hashlib.sha256(good).hexdigest())
    assert refused.value.extensions["sha256"] == hashlib.sha256(flipped).hexdigest()
    with pytest.raises(ChunkWrongSize):
        await store.put_chunk(upload, 2, streamed(good[:-1]), hashlib.sha256(good[:-1]).hexdigest())
    with pytest.raises(ChunkWrongSize, match="more were sent"):
        await store.put_chunk(upload, 2, streamed(good + b"x"), hashlib.sha256(good).hexdigest())
    staged = sorted(p.name for p in (store.root / "staging" / str(upload.id)).iterdir())
    assert staged == ["00000001.chunk", "key"]  # no temporary file left behind
    for index in (0, 2, 3, 4, 5):
        chunk = chunk_of(DATA, index)
        await store.put_chunk(upload, index, streamed(chunk), hashlib.sha256(chunk).hexdigest())
    assert await read_all(store, await store.commit(upload), 0, len(DATA)) == DATA


async def test_commit_refuses_missing_chunks_and_a_file_that_is_not_the_declared_one(store):
    upload = upload_of()
    for index in range(upload.chunks - 1):
        chunk = chunk_of(DATA, index)
        await store.put_chunk(upload, index, streamed(chunk), hashlib.sha256(chunk).hexdigest())
    with pytest.raises(ChunksMissing) as missing:
        await store.commit(upload)
    assert missing.value.extensions["missing"] == [upload.chunks - 1]
    # The last chunk, well formed but other bytes than the declared file's (sent with their
    # own digest): every chunk passes, the whole file does not, and nothing is stored.
    other = bytes(len(chunk_of(DATA, upload.chunks - 1)))
    await store.put_chunk(
        upload, upload.chunks - 1, streamed(other), hashlib.sha256(other).hexdigest()
    )
    with pytest.raises(FileDigestMismatch) as mismatch:
        await store.commit(upload)
    assert mismatch.value.extensions["declared_sha256"] == SHA
    assert not any(path.is_file() for path in (store.root / "objects").rglob("*"))


async def test_staged_chunks_swapped_on_disk_are_sent_again_not_stored(store):
    upload = upload_of()
    for index in range(upload.chunks):
        chunk = chunk_of(DATA, index)
        await store.put_chunk(upload, index, streamed(chunk), hashlib.sha256(chunk).hexdigest())
    folder = store.root / "staging" / str(upload.id)
    first, second = folder / "00000000.chunk", folder / "00000001.chunk"
    swap = folder / "swap"
    first.rename(swap)
    second.rename(first)
    swap.rename(second)
    with pytest.raises(ChunksMissing) as damaged:
        await store.commit(upload)
    assert damaged.value.extensions["missing"] == [0, 1]  # each fails its records' tags
    for index in (0, 1):  # sent again, they replace the damaged copies
        chunk = chunk_of(DATA, index)
        await store.put_chunk(upload, index, streamed(chunk), hashlib.sha256(chunk).hexdigest())
    assert await read_all(store, await store.commit(upload), 0, len(DATA)) == DATA


async def test_an_empty_file_is_stored_and_has_no_records(store):
    upload = upload_of(b"")
    assert upload.chunks == 0
    blob = await store.commit(upload)
    assert blob.size_bytes == 0 and await store.exists(blob)
    assert object_path(store, blob).stat().st_size == 0


# --- ranged reads -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalFolderStore, StoredBlob]:
    store = LocalFolderStore(tmp_path_factory.mktemp("blobs"), MASTER, record_bytes=RECORD)
    return store, asyncio.run(stored(store))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_range_reads_back_exactly_in_pieces_of_at_most_one_record(stored_file, data):
    store, blob = stored_file
    start = data.draw(st.integers(0, len(DATA) - 1))
    end = data.draw(st.integers(start + 1, len(DATA)))

    async def pieces() -> list[bytes]:
        return [piece async for piece in store.read(blob, start, end)]

    got = asyncio.run(pieces())
    assert b"".join(got) == DATA[start:end]
    assert all(0 < len(piece) <= RECORD for piece in got)
    assert len(got) == (end - 1) // RECORD - start // RECORD + 1  # one per record touched


async def test_a_range_decrypts_only_the_records_it_covers(store):
    blob = await stored(store)
    path = object_path(store, blob)
    sealed = bytearray(path.read_bytes())
    sealed[3 * (RECORD + OVERHEAD) + 20] ^= 0x01  # damage record 3 only
    path.write_bytes(bytes(sealed))
    # Records 1 and 2 (a range across their boundary) read fine without touching record 3 ...
    assert await read_all(store, blob, RECORD + 5, 3 * RECORD) == DATA[RECORD + 5 : 3 * RECORD]
    # ... and a range that reaches into record 3 is refused, never served altered.
    with pytest.raises(StoredFileDamaged, match="record 3 "):
        await read_all(store, blob, 2 * RECORD, 3 * RECORD + 1)


async def test_records_swapped_or_cut_off_in_a_stored_object_are_refused(store):
    blob = await stored(store)
    path = object_path(store, blob)
    sealed = path.read_bytes()
    size = RECORD + OVERHEAD
    swapped = sealed[size : 2 * size] + sealed[:size] + sealed[2 * size :]
    path.write_bytes(swapped)
    with pytest.raises(StoredFileDamaged, match="record 0 "):
        await read_all(store, blob, 0, 10)
    path.write_bytes(sealed[: -(len(DATA) % RECORD + OVERHEAD)])  # the last record cut off
    with pytest.raises(StoredFileDamaged, match="record 10 "):
        await read_all(store, blob, len(DATA) - 1, len(DATA))
    path.unlink()
    assert not await store.exists(blob)
    with pytest.raises(StoredFileDamaged, match="missing"):
        await read_all(store, blob, 0, 1)
