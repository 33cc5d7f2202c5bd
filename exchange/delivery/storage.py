"""Where delivered files live: content-addressed, encrypted at rest, never served half-stored.

A stored file (a *blob*) is named by the SHA-256 of its plaintext and kept as a sequence of
*records*: the plaintext cut into `RECORD_BYTES` (1 MiB) pieces, each sealed with AES-256-GCM
under the file's own random data key as ``nonce (12) ‖ ciphertext ‖ tag (16)``. Record ``i``
therefore starts at ``i * (RECORD_BYTES + 28)``, so a byte range is read by decrypting only the
records that cover it. Nonces are random per record, never derived from the index: a chunk that
is uploaded again (perhaps with other bytes) is sealed anew, and a derived nonce would then be
used twice under one key. The additional data of each record binds the file's SHA-256, its size
and the record's index, so records cannot be swapped, moved to another file or cut off the end
without the tag check failing. The data key is wrapped (AES-256-GCM, the file's SHA-256 as
additional data) by the exchange's master key (`exchange.platform.signing.load_master_key`) and
stored in ``delivery_blobs.wrapped_key``; losing the master key loses every file.

An upload is *staged* first: each chunk (a whole number of records, up to `MAX_CHUNK_BYTES`) is
sealed as it streams in, under a data key made for that upload, into a temporary file that is
renamed into place only when the chunk's bytes hash to the SHA-256 the client announced. `commit`
reads the staged chunks in order, checks every tag, hashes the whole plaintext, and only when
every chunk is there and the digest and size are the declared ones renames the assembled object
into place (after fsync). The database rows that make a file servable (``delivery_blobs``,
``delivery_files``) are written after that, in one transaction; a failed, corrupt or abandoned
upload leaves nothing a buyer can reach. The object's name carries a tag of its wrapped key
(``<sha256>.<tag>``), so an object always matches the row that names it: two uploads of the
same content racing each other, or a commit whose transaction failed after the rename, leave at
worst an unreferenced object, never a row pointing at bytes sealed under another key.

Layout under ``<state>/blobs`` (`LocalFolderStore`, the embedded default)::

    objects/<sha256[:2]>/<sha256>.<key tag>   sealed records of a stored file
    staging/<upload id>/key                    the upload's wrapped data key
    staging/<upload id>/<chunk:08d>.chunk      sealed records of one received chunk

**Several API machines.** Every machine must see the same blobs, staging included (a chunk may
reach one machine and the ``complete`` call another). Either mount one shared filesystem at
``<state>/blobs`` on every API machine (NFS v4, CephFS, a cloud file share: anything with atomic
``rename`` and ``link`` within the mount, and ``fsync``), all machines sharing one master key
(``DATAEX_MASTER_KEY``); or implement `BlobStore` on S3-compatible object storage: a staged
chunk is an object (or a multipart-upload part), ``commit`` assembles and verifies them server
side into ``objects/<sha256>.<tag>`` (a multipart completion or a copy, then a read-back to
check the digest), and ``read`` is a ranged GET of the records covering the range. Nothing above
the interface changes: the rows and the metering are the same.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import secrets
import shutil
import uuid
from collections.abc import AsyncGenerator, AsyncIterable
from pathlib import Path
from typing import BinaryIO, Final, Protocol

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from exchange.platform.errors import Conflict, DataexError, InvalidInput
from exchange.platform.statefolder import open_private, private_dirs

RECORD_BYTES: Final = 1 << 20  # plaintext per sealed record: the unit of decryption and metering
MAX_CHUNK_BYTES: Final = 8 << 20  # one upload request's body
READ_AHEAD: Final = 4  # records read and decrypted ahead of the one a download sends
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
OVERHEAD: Final = NONCE_BYTES + TAG_BYTES
_KEY_AAD: Final = b"dataex-blob-key\x00"
_RECORD_AAD: Final = b"dataex-blob-record\x00"


class ChunkCorrupt(InvalidInput):
    code = "chunk_corrupt"
    title = "The chunk's bytes do not hash to the SHA-256 sent with it"


class ChunkWrongSize(InvalidInput):
    code = "chunk_wrong_size"
    title = "The chunk is not as long as its place in the file requires"


class FileDigestMismatch(InvalidInput):
    code = "file_digest_mismatch"
    title = "The uploaded file does not match the SHA-256 and size the revision declares"


class ChunksMissing(Conflict):
    code = "upload_incomplete"
    title = "Some chunks of the upload have not been received"


class StoredFileDamaged(DataexError):
    """A stored or staged record fails its tag, or its object is gone: the storage was altered,
    or the master key is not the one the file was stored under."""

    status = 500
    code = "stored_file_damaged"
    title = "A stored file cannot be read back"


class StagedUpload(msgspec.Struct, frozen=True):
    """What the store needs to know of an upload in progress (a ``delivery_uploads`` row)."""

    id: uuid.UUID
    sha256: str
    size_bytes: int
    chunk_bytes: int

    @property
    def chunks(self) -> int:
        return -(-self.size_bytes // self.chunk_bytes)

    def chunk_length(self, index: int) -> int:
        """Bytes in chunk ``index``: ``chunk_bytes``, less for the last one."""
        return min(self.chunk_bytes, self.size_bytes - index * self.chunk_bytes)


class StoredBlob(msgspec.Struct, frozen=True):
    """A stored file (a ``delivery_blobs`` row): ``chunk_bytes`` is its record size."""

    sha256: str
    size_bytes: int
    wrapped_key: bytes
    chunk_bytes: int


# --- sealing: pure functions over bytes ---------------------------------------------------------


def new_data_key() -> bytes:
    return secrets.token_bytes(32)


def wrap_key(master_key: bytes, sha256: str, data_key: bytes) -> bytes:
    """The data key sealed under the master key, bound to the file it encrypts."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(master_key).encrypt(nonce, data_key, _KEY_AAD + sha256.encode())


def unwrap_key(master_key: bytes, sha256: str, wrapped: bytes) -> bytes:
    try:
        return AESGCM(master_key).decrypt(
            wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _KEY_AAD + sha256.encode()
        )
    except InvalidTag as error:
        raise StoredFileDamaged(
            f"the data key of file {sha256} does not open: another master key"
            " (DATAEX_MASTER_KEY or <state>/master.key) or an altered row"
        ) from error


def key_tag(wrapped: bytes) -> str:
    """Names the object sealed under this wrapped key (see the module's docstring)."""
    return hashlib.sha256(wrapped).hexdigest()[:16]


def sealed_size(size_bytes: int, record_bytes: int = RECORD_BYTES) -> int:
    return size_bytes + OVERHEAD * -(-size_bytes // record_bytes)


class Sealer:
    """AES-256-GCM over the records of one file, under its data key."""

    def __init__(
        self, data_key: bytes, sha256: str, size_bytes: int, record_bytes: int = RECORD_BYTES
    ) -> None:
        self._aead = AESGCM(data_key)
        self._prefix = _RECORD_AAD + bytes.fromhex(sha256) + size_bytes.to_bytes(8, "big")
        self.sha256 = sha256
        self.size_bytes = size_bytes
        self.record_bytes = record_bytes

    def _aad(self, index: int) -> bytes:
        return self._prefix + index.to_bytes(8, "big")

    def plain_length(self, index: int) -> int:
        """Plaintext bytes in record ``index`` (0 past the end)."""
        return max(0, min(self.record_bytes, self.size_bytes - index * self.record_bytes))

    def seal(self, index: int, plaintext: bytes | memoryview) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, self._aad(index))

    def open(self, index: int, record: bytes | memoryview) -> bytes:
        """The plaintext of record ``index``; `StoredFileDamaged` if it is not that record of
        this file, sealed under this key, unaltered."""
        if len(record) != self.plain_length(index) + OVERHEAD:
            raise StoredFileDamaged(
                f"record {index} of file {self.sha256} is {len(record)} bytes,"
                f" {self.plain_length(index) + OVERHEAD} expected"
            )
        try:
            return self._aead.decrypt(record[:NONCE_BYTES], record[NONCE_BYTES:], self._aad(index))
        except InvalidTag as error:
            raise StoredFileDamaged(
                f"record {index} of file {self.sha256} fails its authentication tag"
            ) from error


# --- the interface -----------------------------------------------------------------------------


class BlobStore(Protocol):
    """Staging, commit and ranged reads of stored files; see the module's docstring."""

    async def put_chunk(
        self, upload: StagedUpload, index: int, body: AsyncIterable[bytes], sha256: str
    ) -> None:
        """Stage chunk ``index`` from ``body`` (streamed, sealed as it arrives). It replaces an
        earlier copy only if its length is right (`ChunkWrongSize`) and its bytes hash to
        ``sha256`` (`ChunkCorrupt`); otherwise nothing changes."""
        ...

    async def commit(self, upload: StagedUpload) -> StoredBlob:
        """Assemble the staged chunks into a stored object once every chunk is there and
        opens (else `ChunksMissing`: those chunks are to be sent again) and the whole file
        hashes to the declared SHA-256 and size (else `FileDigestMismatch`; nothing is
        stored). Staging stays until `discard`."""
        ...

    async def discard(self, upload_id: uuid.UUID) -> None:
        """Delete an upload's staging (after its commit, or when it is abandoned)."""
        ...

    async def exists(self, blob: StoredBlob) -> bool:
        """Whether the object a ``delivery_blobs`` row names is there."""
        ...

    async def delete(self, blob: StoredBlob) -> None:
        """Remove an object no row names (a second copy of content stored already)."""
        ...

    def read(self, blob: StoredBlob, start: int, end: int) -> AsyncGenerator[bytes, None]:
        """The plaintext of bytes ``[start, end)``, one piece per record it touches (at most
        ``blob.chunk_bytes`` each), decrypting only those records."""
        ...


# --- the embedded default: a local (or shared) folder ------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_close(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


class LocalFolderStore:
    """`BlobStore` on a folder (``<state>/blobs``), local or a shared mount."""

    def __init__(self, root: Path, master_key: bytes, record_bytes: int = RECORD_BYTES) -> None:
        self.root = root
        self._master = master_key
        self.record_bytes = record_bytes

    def _object(self, sha256: str, wrapped: bytes) -> Path:
        return self.root / "objects" / sha256[:2] / f"{sha256}.{key_tag(wrapped)}"

    def _staging(self, upload_id: uuid.UUID) -> Path:
        return self.root / "staging" / str(upload_id)

    def _chunk(self, upload_id: uuid.UUID, index: int) -> Path:
        return self._staging(upload_id) / f"{index:08d}.chunk"

    def _staging_key(self, upload: StagedUpload) -> tuple[bytes, bytes]:
        """The upload's (data key, wrapped key), made by whichever request comes first: the
        wrapped key is written whole and then hard-linked into place, so a machine racing
        another never reads half a key, and the first link wins."""
        folder = private_dirs(self._staging(upload.id))
        path = folder / "key"
        if not path.exists():
            temp = folder / f"key.{secrets.token_hex(8)}.tmp"
            with open_private(temp) as handle:
                handle.write(wrap_key(self._master, upload.sha256, new_data_key()))
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(temp, path)
            temp.unlink()
        wrapped = path.read_bytes()
        return unwrap_key(self._master, upload.sha256, wrapped), wrapped

    def _check_layout(self, upload: StagedUpload) -> None:
        if upload.chunk_bytes % self.record_bytes or upload.chunk_bytes > MAX_CHUNK_BYTES:
            raise ValueError(
                f"upload chunks of {upload.chunk_bytes} bytes: they must be a multiple of"
                f" {self.record_bytes} and at most {MAX_CHUNK_BYTES}"
            )

    async def put_chunk(
        self, upload: StagedUpload, index: int, body: AsyncIterable[bytes], sha256: str
    ) -> None:
        self._check_layout(upload)
        data_key, _ = await asyncio.to_thread(self._staging_key, upload)
        sealer = Sealer(data_key, upload.sha256, upload.size_bytes, self.record_bytes)
        target = self._chunk(upload.id, index)
        temp = target.with_name(f"{target.name}.{secrets.token_hex(8)}.tmp")
        handle = await asyncio.to_thread(open_private, temp)
        try:
            await self._receive(upload, index, body, sha256, sealer, handle)
            await asyncio.to_thread(self._place_chunk, handle, temp, target)
        except BaseException:
            handle.close()
            temp.unlink(missing_ok=True)
            raise

    async def _receive(
        self,
        upload: StagedUpload,
        index: int,
        body: AsyncIterable[bytes],
        sha256: str,
        sealer: Sealer,
        handle: BinaryIO,
    ) -> None:
        """Seal the body into ``handle`` record by record as it streams in, then check it."""
        expected = upload.chunk_length(index)
        digest = hashlib.sha256()
        record = index * (upload.chunk_bytes // self.record_bytes)
        pending = bytearray()
        received = 0
        async for piece in body:
            received += len(piece)
            if received > expected:
                raise ChunkWrongSize(
                    f"chunk {index} must be {expected} bytes; more were sent",
                    extensions={"index": index, "expected_bytes": expected},
                )
            pending += piece
            while len(pending) >= self.record_bytes:
                plain = bytes(pending[: self.record_bytes])
                del pending[: self.record_bytes]
                await asyncio.to_thread(self._seal_into, handle, sealer, digest, record, plain)
                record += 1
        if received != expected:
            raise ChunkWrongSize(
                f"chunk {index} must be {expected} bytes; {received} were sent",
                extensions={"index": index, "expected_bytes": expected, "bytes": received},
            )
        if pending:
            await asyncio.to_thread(self._seal_into, handle, sealer, digest, record, bytes(pending))
        if digest.hexdigest() != sha256:
            raise ChunkCorrupt(
                f"chunk {index} hashes to {digest.hexdigest()}, not {sha256}: send it again",
                extensions={"index": index, "sha256": digest.hexdigest()},
            )

    @staticmethod
    def _seal_into(
        handle: BinaryIO, sealer: Sealer, digest: hashlib._Hash, index: int, plain: bytes
    ) -> None:
        digest.update(plain)
        handle.write(sealer.seal(index, plain))

    @staticmethod
    def _place_chunk(handle: BinaryIO, temp: Path, target: Path) -> None:
        _durable_close(handle)
        temp.replace(target)  # a chunk sent again replaces the earlier copy whole
        _fsync_dir(target.parent)

    async def commit(self, upload: StagedUpload) -> StoredBlob:
        self._check_layout(upload)
        return await asyncio.to_thread(self._assemble, upload)

    def _assemble(self, upload: StagedUpload) -> StoredBlob:
        data_key, wrapped = self._staging_key(upload)
        missing = [i for i in range(upload.chunks) if not self._chunk(upload.id, i).exists()]
        if missing:
            raise ChunksMissing(
                f"{len(missing)} of {upload.chunks} chunks are not staged; send them again",
                extensions={"missing": missing[:1000]},
            )
        sealer = Sealer(data_key, upload.sha256, upload.size_bytes, self.record_bytes)
        target = self._object(upload.sha256, wrapped)
        private_dirs(target.parent)
        temp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
        try:
            with open_private(temp) as out:
                self._copy_checked(upload, sealer, out)
                out.flush()
                os.fsync(out.fileno())
            temp.replace(target)
            _fsync_dir(target.parent)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return StoredBlob(upload.sha256, upload.size_bytes, wrapped, self.record_bytes)

    def _copy_checked(self, upload: StagedUpload, sealer: Sealer, out: BinaryIO) -> None:
        """Copy the staged records to ``out`` in order, opening each (its tag, its place) and
        hashing the plaintext. A staged chunk that does not open (altered or misplaced on disk)
        is `ChunksMissing`: sent again, it replaces the damaged copy. Then `FileDigestMismatch`
        unless the whole is the declared file."""
        per_chunk = upload.chunk_bytes // self.record_bytes
        digest = hashlib.sha256()
        total = 0
        damaged = []
        for chunk in range(upload.chunks):
            data = memoryview(self._chunk(upload.id, chunk).read_bytes())
            index, offset = chunk * per_chunk, 0
            try:
                while offset < len(data):
                    length = sealer.plain_length(index) + OVERHEAD
                    plain = sealer.open(index, data[offset : offset + length])
                    digest.update(plain)
                    total += len(plain)
                    index, offset = index + 1, offset + length
            except StoredFileDamaged:
                damaged.append(chunk)
            out.write(data)
        if damaged:
            raise ChunksMissing(
                f"the staged copies of chunks {damaged[:20]} are damaged; send them again",
                extensions={"missing": damaged[:1000]},
            )
        if total != upload.size_bytes or digest.hexdigest() != upload.sha256:
            raise FileDigestMismatch(
                f"the uploaded file is {total} bytes hashing to {digest.hexdigest()}; the"
                f" revision declares {upload.size_bytes} bytes hashing to {upload.sha256}."
                " Nothing was stored: start a new upload",
                extensions={
                    "declared_sha256": upload.sha256, "declared_bytes": upload.size_bytes,
                    "sha256": digest.hexdigest(), "bytes": total,
                },
            )  # fmt: skip

    async def discard(self, upload_id: uuid.UUID) -> None:
        await asyncio.to_thread(shutil.rmtree, self._staging(upload_id), ignore_errors=True)

    async def exists(self, blob: StoredBlob) -> bool:
        return await asyncio.to_thread(self._object(blob.sha256, blob.wrapped_key).is_file)

    async def delete(self, blob: StoredBlob) -> None:
        await asyncio.to_thread(self._object(blob.sha256, blob.wrapped_key).unlink, missing_ok=True)

    async def read(self, blob: StoredBlob, start: int, end: int) -> AsyncGenerator[bytes, None]:
        if not 0 <= start < end <= blob.size_bytes:
            raise ValueError(f"range [{start}, {end}) is not within {blob.size_bytes} bytes")
        sealer = Sealer(
            unwrap_key(self._master, blob.sha256, blob.wrapped_key),
            blob.sha256,
            blob.size_bytes,
            blob.chunk_bytes,
        )
        path = self._object(blob.sha256, blob.wrapped_key)
        if not await asyncio.to_thread(path.is_file):
            raise StoredFileDamaged(f"the object of file {blob.sha256} is missing")
        size = blob.chunk_bytes
        first, last = start // size, (end - 1) // size
        # Records are read and decrypted READ_AHEAD ahead (in threads) while the caller meters
        # and sends the ones before them.
        ahead = collections.deque(
            self._fetch(path, sealer, i) for i in range(first, min(first + READ_AHEAD, last + 1))
        )
        try:
            for index in range(first, last + 1):
                plain = await ahead[0]
                ahead.popleft()
                if index + READ_AHEAD <= last:
                    ahead.append(self._fetch(path, sealer, index + READ_AHEAD))
                base = index * size
                yield plain[max(start - base, 0) : min(end - base, len(plain))]
        finally:
            for future in ahead:  # reads ahead that nobody waits for any more
                future.add_done_callback(_retrieved)

    @staticmethod
    def _fetch(path: Path, sealer: Sealer, index: int) -> asyncio.Future[bytes]:
        return asyncio.ensure_future(asyncio.to_thread(LocalFolderStore._read_record, path,
                                                       sealer, index))  # fmt: skip

    @staticmethod
    def _read_record(path: Path, sealer: Sealer, index: int) -> bytes:
        with path.open("rb") as handle:
            handle.seek(index * (sealer.record_bytes + OVERHEAD))
            return sealer.open(index, handle.read(sealer.plain_length(index) + OVERHEAD))


def _retrieved(future: asyncio.Future[bytes]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as lost
