"""File delivery: the seller uploads a revision's files in resumable chunks; the grant's buyer
downloads them with a delivery token, by byte range, each byte metered as it is sent.

**Uploads** (`FileUploads`). A revision declares its files (``manual.files``: name, SHA-256,
size). The seller opens an upload for one of them (or gets back the one already open), sends
its chunks (`UPLOAD_CHUNK_BYTES`, the last one shorter) in any order, each with the SHA-256 of
its bytes; a chunk whose bytes do not match is refused and may be sent again, and a chunk sent
twice replaces the first copy. ``complete`` checks the whole file against the declaration and
only then makes it servable; see `exchange.delivery.storage` for why nothing half-stored can
be served. Content is stored once per SHA-256: a second upload of stored content (another
revision, another product) is still sent and checked in full, so knowing a digest never
attaches someone else's file to your product.

**Downloads** (`FileDeliveries`). The token is checked offline (`TokenVerifier`), then the
grant (active and within its term, else its state's refusal), then the file and the range.
A response is sent in *pieces*: whole stored records, the first one record (1 MiB), each next
one twice as long, up to `MAX_PIECE_BYTES` (8 MiB). For each piece, in this order:

1. its units are taken from the process's `LeaseBook`: ``bytes`` when the grant has a bytes
   quota, ``spend`` (its cost in milli-fen) when it has a spend cap;
2. its `UsageRecord` (``bytes``, the cost, the lease ids, the byte range) is committed;
3. only then are its bytes handed to the server to send.

So a completed download meters exactly the bytes sent, and nothing is ever sent unmetered (the
quota cannot be overrun: a record is refused on a closed or expired lease, and then the piece
is not sent). An interrupted download (the client gone, the process killed) has metered every
byte it sent and at most the rest of one piece: the piece whose record committed while some of
its bytes did not get out, at most 1 MiB in a download's first MiB and never more than 8 MiB.
A process killed between 1 and 2 has metered nothing for that piece; its lease is closed by the
reaper once it expires, and what it counts as used comes from the records only. Why pieces
grow: each record is a durable commit (a WAL flush, about 3 ms here), so 1 MiB pieces would cap
one download near 300 MB/s, while a client that gives up early should pay for little more than
it got.

**The download limit.** A download longer than what is left of a limited dimension (the
grant's ``bytes`` quota, or its spend cap at the file's byte price) is refused before anything
is sent: 403 ``quota_exhausted`` with ``needed`` and ``left`` (what is left = the limit less
the units already metered, leases of other downloads included as far as they are spent). Ask a
shorter range instead. Two downloads racing for the last bytes can both pass that check; then
the leases decide piece by piece, the loser's body is cut short at a piece boundary (shorter
than its Content-Length) and it is metered only for what it got. While a download runs the
grant is read again before a piece once `GRANT_RECHECK_SECONDS` have passed since the last
read: a grant suspended or ended meanwhile stops the download at its next piece.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Sequence,
)
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import asyncpg
import msgspec

from exchange.delivery.quota import LeaseBook, needs_for
from exchange.delivery.schemas import GrantSnapshot
from exchange.delivery.storage import (
    MAX_CHUNK_BYTES,
    BlobStore,
    ChunksMissing,
    FileDigestMismatch,
    StagedUpload,
    StoredBlob,
)
from exchange.delivery.tokens import (
    STATE_REFUSALS,
    GrantExpired,
    GrantRefused,
    QuotaExhausted,
    TokenVerifier,
)
from exchange.delivery.usage import UsageRecord, UsageRecorder
from exchange.platform.audit import Actor, record
from exchange.platform.auth import Principal
from exchange.platform.clock import Clock
from exchange.platform.db import Connection, Executor
from exchange.platform.errors import Conflict, DataexError, InvalidInput, NotFound
from exchange.platform.logging import get_logger
from exchange.platform.metering import SPEND, cost_millifen

log = get_logger(__name__)

UPLOAD_CHUNK_BYTES: Final = MAX_CHUNK_BYTES
# A download is metered in pieces that grow from one record (1 MiB) to this: a short download
# is metered per MiB, a long one spends one usage commit (a WAL flush) per 8 MiB.
MAX_PIECE_BYTES: Final = 8 << 20
# Body messages handed to the server: granian moves 256 KiB messages faster than whole records
# (measured here: about 650 MB/s against 500 MB/s with 1 MiB messages).
SEND_BYTES: Final = 256 << 10
GRANT_RECHECK_SECONDS: Final = 1.0
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class DeclaredFile(Protocol):
    """A file a revision declares (the listing room's ``DeliveryFile``)."""

    @property
    def name(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def size_bytes(self) -> int: ...


# The files revision ``n`` of a product declares (its ``manual.files``), NotFound if it has no
# such revision. The listing room answers, through the composition root: delivery does not
# import the listing room (it would bring the policy engine with it).
RevisionFiles = Callable[[Executor, uuid.UUID, int], Awaitable[Sequence[DeclaredFile]]]


# --- problems -------------------------------------------------------------------------------------


class FileNotDeclared(NotFound):
    code = "file_not_declared"
    title = "The revision declares no file of that name"


class FileNotStored(Conflict):
    code = "file_not_stored"
    title = "The seller has not uploaded this file yet"


class UploadClosed(Conflict):
    code = "upload_closed"
    title = "The upload is complete or abandoned"


class UploadBusy(Conflict):
    code = "upload_completing"
    title = "The upload is being completed by another request"


class ChunkOutOfRange(InvalidInput):
    code = "chunk_out_of_range"
    title = "The file has no chunk of that number"


class ChunkDigestRequired(InvalidInput):
    code = "chunk_digest_required"
    title = "Send the chunk's SHA-256 in X-Chunk-SHA256 (64 hex digits)"


class ChunkInterrupted(DataexError):
    code = "chunk_interrupted"
    title = "The connection closed before the whole chunk arrived"


class RangeNotSatisfiable(DataexError):
    """The answer carries ``Content-Range: bytes */<size>`` (the API adds it)."""

    status = 416
    code = "range_not_satisfiable"
    title = "The requested range is not within the file, or is not one range"

    def __init__(self, detail: str, *, size: int) -> None:
        super().__init__(detail, extensions={"size_bytes": size})
        self.size = size


# --- shapes ---------------------------------------------------------------------------------------

UploadState = Literal["open", "complete", "abandoned"]


class Upload(msgspec.Struct, frozen=True):
    """An upload of one declared file. Send each chunk not in ``received``: chunk ``i`` is
    bytes ``[i * chunk_bytes, min((i + 1) * chunk_bytes, size_bytes))`` of the file."""

    id: uuid.UUID
    product_id: uuid.UUID
    revision: int
    name: str
    sha256: str
    size_bytes: int
    chunk_bytes: int
    chunks: int
    received: list[int]
    state: UploadState
    created_at: datetime
    updated_at: datetime


class GrantFile(msgspec.Struct, frozen=True):
    """A file the grant delivers; ``stored``: the seller has uploaded it (it can be fetched)."""

    name: str
    sha256: str
    size_bytes: int
    stored: bool


class GrantFiles(msgspec.Struct, frozen=True):
    grant_id: uuid.UUID
    product_code: str
    revision: int
    files: list[GrantFile]


# --- uploads --------------------------------------------------------------------------------------


def _staged(row: Any) -> StagedUpload:
    return StagedUpload(row["id"], row["sha256"], row["size_bytes"], row["chunk_bytes"])


def _upload(row: Any) -> Upload:
    staged = _staged(row)
    return Upload(
        id=row["id"], product_id=row["product_id"], revision=row["revision"], name=row["name"],
        sha256=row["sha256"], size_bytes=row["size_bytes"], chunk_bytes=row["chunk_bytes"],
        chunks=staged.chunks, received=list(row["received"]), state=row["state"],
        created_at=row["created_at"], updated_at=row["updated_at"],
    )  # fmt: skip


_OWN_UPLOAD = """
SELECT u.* FROM delivery_uploads u JOIN products p ON p.id = u.product_id
 WHERE u.id = $1 AND p.seller_org_id = $2
"""


class FileUploads:
    """The seller's side: resumable, chunked uploads of a revision's declared files."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        store: BlobStore,
        revision_files: RevisionFiles,
        chunk_bytes: int = UPLOAD_CHUNK_BYTES,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.store = store
        self.revision_files = revision_files
        self.chunk_bytes = chunk_bytes

    async def _declared(
        self, conn: Executor, principal: Principal, product_id: uuid.UUID, revision: int, name: str
    ) -> DeclaredFile:
        seller = await conn.fetchval("SELECT seller_org_id FROM products WHERE id = $1", product_id)
        if seller is None or seller != principal.org_id:
            raise NotFound(f"no product {product_id} of yours")
        files = await self.revision_files(conn, product_id, revision)
        for declared in files:
            if declared.name == name:
                return declared
        raise FileNotDeclared(
            f"revision {revision} of product {product_id} declares no file {name!r}",
            extensions={"declared": [f.name for f in files]},
        )

    async def begin(
        self, principal: Principal, product_id: uuid.UUID, revision: int, name: str
    ) -> tuple[Upload, bool]:
        """The open upload of a declared file, made if there is none (then True); once the file
        is stored, the upload that stored it (state ``complete``)."""
        now = self.clock.now()
        async with self.pool.acquire() as conn:
            declared = await self._declared(conn, principal, product_id, revision, name)
            row = await conn.fetchrow(
                "INSERT INTO delivery_uploads (id, product_id, revision, name, sha256, size_bytes,"
                " chunk_bytes, state, created_by, created_at, updated_at)"
                " SELECT $1, $2, $3, $4, $5, $6, $7, 'open', $8, $9, $9"
                " WHERE NOT EXISTS (SELECT 1 FROM delivery_files WHERE product_id = $2"
                " AND revision = $3 AND name = $4)"
                " ON CONFLICT (product_id, revision, name) WHERE state = 'open' DO NOTHING"
                " RETURNING *",
                uuid.uuid4(), product_id, revision, name, declared.sha256, declared.size_bytes,
                self.chunk_bytes, principal.org_id, now,
            )  # fmt: skip
            if row is not None:
                return _upload(row), True
            row = await conn.fetchrow(
                "SELECT * FROM delivery_uploads WHERE product_id = $1 AND revision = $2"
                " AND name = $3 AND state <> 'abandoned'"
                " ORDER BY state = 'open' DESC, updated_at DESC LIMIT 1",
                product_id, revision, name,
            )  # fmt: skip
        if row is None:  # completed or abandoned between the two statements: ask again
            return await self.begin(principal, product_id, revision, name)
        return _upload(row), False

    async def _own(self, conn: Executor, principal: Principal, upload_id: uuid.UUID) -> Any:
        row = await conn.fetchrow(_OWN_UPLOAD, upload_id, principal.org_id)
        if row is None:
            raise NotFound(f"no upload {upload_id} of yours")
        return row

    async def progress(self, principal: Principal, upload_id: uuid.UUID) -> Upload:
        return _upload(await self._own(self.pool, principal, upload_id))

    async def put_chunk(
        self,
        principal: Principal,
        upload_id: uuid.UUID,
        index: int,
        digest: str | None,
        body: AsyncIterable[bytes],
    ) -> Upload:
        """Stage chunk ``index`` (streamed) if its bytes hash to ``digest``."""
        row = await self._own(self.pool, principal, upload_id)
        if row["state"] != "open":
            raise UploadClosed(f"upload {upload_id} is {row['state']}")
        staged = _staged(row)
        if not 0 <= index < staged.chunks:
            raise ChunkOutOfRange(
                f"upload {upload_id} has chunks 0 to {staged.chunks - 1}, not {index}",
                extensions={"chunks": staged.chunks},
            )
        if digest is None or not _SHA256.match(digest):
            raise ChunkDigestRequired(
                "X-Chunk-SHA256 must be the hex SHA-256 of the chunk's bytes"
                + ("" if digest is None else f", not {digest[:80]!r}")
            )
        await self.store.put_chunk(staged, index, body, digest.lower())
        row = await self.pool.fetchrow(
            "UPDATE delivery_uploads SET received = ARRAY(SELECT DISTINCT i FROM"
            " unnest(array_append(received, $2)) AS i ORDER BY i), updated_at = $3"
            " WHERE id = $1 AND state = 'open' RETURNING *",
            upload_id, index, self.clock.now(),
        )  # fmt: skip
        if row is None:
            raise UploadClosed(f"upload {upload_id} was completed or abandoned meanwhile")
        return _upload(row)

    async def complete(self, actor: Actor, principal: Principal, upload_id: uuid.UUID) -> Upload:
        """Store the file if every chunk is there and it is the declared file; otherwise the
        upload is abandoned (digest mismatch) or stays open (chunks missing). Completing a
        complete upload answers it again."""
        async with self.pool.acquire() as conn:
            # A session lock rather than a transaction: checking a large file takes seconds,
            # and no transaction should stay open that long.
            lock = await conn.fetchval("SELECT hashtextextended($1, 0)", f"upload:{upload_id}")
            row = await self._own(conn, principal, upload_id)
            if row["state"] == "complete":
                return _upload(row)
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock):
                raise UploadBusy(f"upload {upload_id} is being completed; ask again shortly")
            try:
                return await self._complete(conn, actor, upload_id)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", lock)

    async def _complete(self, conn: Connection, actor: Actor, upload_id: uuid.UUID) -> Upload:
        row: Any = await conn.fetchrow("SELECT * FROM delivery_uploads WHERE id = $1", upload_id)
        if row["state"] != "open":
            if row["state"] == "complete":
                return _upload(row)
            raise UploadClosed(f"upload {upload_id} is {row['state']}")
        staged = _staged(row)
        missing = sorted(set(range(staged.chunks)) - set(row["received"]))
        if missing:
            raise ChunksMissing(
                f"{len(missing)} of {staged.chunks} chunks have not been received",
                extensions={"missing": missing[:1000]},
            )
        try:
            blob = await self.store.commit(staged)
        except ChunksMissing as error:  # staging lost or damaged some: sent again
            await conn.execute(
                "UPDATE delivery_uploads SET received = ARRAY(SELECT i FROM unnest(received) AS i"
                " WHERE i <> ALL($2::int[]) ORDER BY i), updated_at = $3 WHERE id = $1",
                upload_id, error.extensions["missing"], self.clock.now(),
            )  # fmt: skip
            raise
        except FileDigestMismatch:
            await conn.execute(
                "UPDATE delivery_uploads SET state = 'abandoned', updated_at = $2 WHERE id = $1",
                upload_id, self.clock.now(),
            )  # fmt: skip
            await self.store.discard(upload_id)
            raise
        redundant = await self._store_rows(conn, actor, row, blob)
        await self.store.discard(upload_id)
        if redundant is not None:
            await self.store.delete(redundant)
        return _upload(await conn.fetchrow("SELECT * FROM delivery_uploads WHERE id = $1",
                                           upload_id))  # fmt: skip

    async def _store_rows(
        self, conn: Connection, actor: Actor, row: Any, blob: StoredBlob
    ) -> StoredBlob | None:
        """Make the file servable (one transaction); returns our object if the content was
        stored already and its object is there (ours is then a spare copy to delete)."""
        now = self.clock.now()
        redundant = None
        async with conn.transaction():
            inserted = await conn.fetchval(
                "INSERT INTO delivery_blobs (sha256, size_bytes, wrapped_key, chunk_bytes,"
                " stored_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sha256) DO NOTHING"
                " RETURNING true",
                blob.sha256, blob.size_bytes, blob.wrapped_key, blob.chunk_bytes, now,
            )  # fmt: skip
            if not inserted:
                old: Any = await conn.fetchrow(
                    "SELECT * FROM delivery_blobs WHERE sha256 = $1 FOR UPDATE", blob.sha256
                )
                existing = StoredBlob(old["sha256"], old["size_bytes"], bytes(old["wrapped_key"]),
                                      old["chunk_bytes"])  # fmt: skip
                if await self.store.exists(existing):
                    redundant = blob
                else:  # its object was lost: this upload stores it again
                    await conn.execute(
                        "UPDATE delivery_blobs SET wrapped_key = $2, chunk_bytes = $3,"
                        " stored_at = $4 WHERE sha256 = $1",
                        blob.sha256, blob.wrapped_key, blob.chunk_bytes, now,
                    )  # fmt: skip
            await conn.execute(
                "INSERT INTO delivery_files (product_id, revision, name, sha256, size_bytes,"
                " created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                row["product_id"], row["revision"], row["name"], blob.sha256, blob.size_bytes,
                now,
            )  # fmt: skip
            await conn.execute(
                "UPDATE delivery_uploads SET state = 'complete', updated_at = $2 WHERE id = $1",
                row["id"], now,
            )  # fmt: skip
            await record(conn, actor, at=now, action="delivery.file_stored",
                         subject_type="product", subject_id=row["product_id"],
                         detail={"revision": row["revision"], "name": row["name"],
                                 "sha256": blob.sha256, "size_bytes": blob.size_bytes,
                                 "upload_id": str(row["id"])})  # fmt: skip
        return redundant


# --- downloads ------------------------------------------------------------------------------------


class GrantDesk(Protocol):
    """What file delivery asks of the grants side; the composition root hands one over."""

    async def snapshot(self, grant_id: uuid.UUID) -> GrantSnapshot | None:
        """The grant as it is now, or None if there is no such grant."""
        ...

    async def verifier(self, kid: str | None) -> TokenVerifier:
        """A verifier holding the exchange's delivery keys (fetched again when ``kid`` is not
        among them) and the revoked token ids."""
        ...


class Download(msgspec.Struct, frozen=True):
    """What to answer: 200 (whole file), 206 (one range) or 304 (the client has it)."""

    status: int
    headers: dict[str, str]
    body: AsyncIterator[bytes] | None


def _tags(header: str) -> list[str]:
    return [tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()]


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The one range ``[start, end)`` a ``Range`` header asks of ``size`` bytes; None for a
    unit other than bytes (the header is then ignored, RFC 9110 §14.2). Several ranges, a
    malformed one or one past the end: `RangeNotSatisfiable` (a metered download never sends
    more than was asked, so several ranges are refused rather than answered whole)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    spec = spec.strip()
    if "," in spec:
        raise RangeNotSatisfiable(
            f"{header!r} asks several ranges: ask one range per request", size=size
        )
    first, dash, last = spec.partition("-")
    if not dash or not (first + last).isdigit() or not (first.isdigit() or last.isdigit()):
        raise RangeNotSatisfiable(f"{header!r} is not bytes=a-b, bytes=a- or bytes=-n", size=size)
    if not first:  # the last n bytes
        if int(last) == 0 or size == 0:
            raise RangeNotSatisfiable(f"{header!r} asks no bytes of {size}", size=size)
        return max(0, size - int(last)), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable(
            f"{header!r} is not within the file's {size} bytes (0-{size - 1})", size=size
        )
    return start, end


_STORED = """
SELECT f.name, b.sha256, b.size_bytes, b.wrapped_key, b.chunk_bytes
  FROM delivery_files f JOIN delivery_blobs b ON b.sha256 = f.sha256
 WHERE f.product_id = $1 AND f.revision = $2 AND f.name = $3
"""
# What is left of a dimension: the limit less what is metered (leases closed count their
# records into used_units; records under leases still open are counted here, as closing them
# would count them: the spend cap by the records' cost, any other dimension by its units).
_LEFT = """
SELECT (q.limit_units - q.used_units - coalesce((
         SELECT sum(CASE WHEN q.dimension = $3 THEN u.cost_millifen
                         ELSE (u.units ->> q.dimension)::bigint END)
           FROM quota_leases l JOIN usage_records u ON u.leases @> ARRAY[l.id]
          WHERE l.grant_id = q.grant_id AND l.dimension = q.dimension AND l.closed_at IS NULL
       ), 0))::bigint AS left_units
  FROM grant_quotas q WHERE q.grant_id = $1 AND q.dimension = $2
"""


class FileDeliveries:
    """The buyer's side: a grant's files, streamed and metered as sent (module docstring)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        store: BlobStore,
        revision_files: RevisionFiles,
        grants: GrantDesk,
        leases: LeaseBook,
        usage: UsageRecorder,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.store = store
        self.revision_files = revision_files
        self.grants = grants
        self.leases = leases
        self.usage = usage

    async def authorise(self, token: str | None, grant_id: uuid.UUID) -> GrantSnapshot:
        """The grant, if the token is a valid file token for it and the grant may deliver now."""
        verifier = await self.grants.verifier(TokenVerifier.kid_of(token) if token else None)
        verifier.verify(token, grant_id=str(grant_id), scope="file")
        grant = await self.grants.snapshot(grant_id)
        if grant is None:
            raise NotFound(f"no grant {grant_id}")
        self._check_live(grant)
        return grant

    def _check_live(self, grant: GrantSnapshot) -> None:
        state = "expired" if grant.valid_until <= self.clock.now() else grant.state
        if state == "active":
            return
        refusal = GrantExpired if state == "expired" else STATE_REFUSALS.get(state, GrantRefused)
        raise refusal(
            f"grant {grant.id} is {state}"
            + (f" ({', '.join(grant.suspended_by)})" if grant.suspended_by else ""),
            extensions={"state": state, "suspended_by": grant.suspended_by},
        )

    async def files(self, token: str | None, grant_id: uuid.UUID) -> GrantFiles:
        grant = await self.authorise(token, grant_id)
        declared = await self.revision_files(self.pool, grant.product_id, grant.revision)
        rows = await self.pool.fetch(
            "SELECT name FROM delivery_files WHERE product_id = $1 AND revision = $2",
            grant.product_id, grant.revision,
        )  # fmt: skip
        stored = {row["name"] for row in rows}
        return GrantFiles(
            grant_id=grant.id, product_code=grant.product_code, revision=grant.revision,
            files=[GrantFile(f.name, f.sha256, f.size_bytes, f.name in stored)
                   for f in declared],
        )  # fmt: skip

    async def _blob(self, grant: GrantSnapshot, name: str) -> StoredBlob:
        row = await self.pool.fetchrow(_STORED, grant.product_id, grant.revision, name)
        if row is not None:
            return StoredBlob(
                row["sha256"], row["size_bytes"], bytes(row["wrapped_key"]), row["chunk_bytes"]
            )
        declared = await self.revision_files(self.pool, grant.product_id, grant.revision)
        if any(f.name == name for f in declared):
            raise FileNotStored(f"the seller has not uploaded {name!r} yet; ask again later")
        raise FileNotDeclared(f"revision {grant.revision} of {grant.product_code} has no {name!r}")

    async def download(
        self,
        token: str | None,
        grant_id: uuid.UUID,
        name: str,
        *,
        range_header: str | None = None,
        if_range: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        """The answer to ``GET /v1/grants/{grant}/files/{name}``. Everything that can refuse
        it (token, grant, file, range, quota, the first piece's record) is decided before a
        status is chosen, so a refusal is a problem response, never a cut body."""
        grant = await self.authorise(token, grant_id)
        blob = await self._blob(grant, name)
        etag = f'"{blob.sha256}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private"}
        if if_none_match is not None and (
            if_none_match.strip() == "*" or etag in _tags(if_none_match)
        ):
            return Download(304, headers, None)
        span = None
        if range_header is not None and (if_range is None or if_range.strip() == etag):
            span = byte_range(range_header, blob.size_bytes)
        start, end = span or (0, blob.size_bytes)
        headers["Content-Length"] = str(end - start)
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size_bytes}"
        if end == start:
            return Download(200, headers, _nothing())
        await self._check_left(grant, end - start)
        detail = {"file": name, "sha256": blob.sha256, "status": 206 if span else 200}
        pieces = self._metered(grant, blob, start, end, detail)
        try:
            first = await anext(pieces)
        except BaseException:
            await pieces.aclose()
            raise
        return Download(206 if span else 200, headers, _rest(first, pieces, grant.id))

    @staticmethod
    def _needs(grant: GrantSnapshot, length: int) -> tuple[dict[str, int], int, dict[str, int]]:
        """The usage of ``length`` bytes: its units, its cost, and what it takes of the quotas."""
        units = {"bytes": length}
        cost = cost_millifen(units, {d.name: d for d in grant.dimensions})
        return units, cost, needs_for(grant.dimensions, grant.spend_cap_fen, units, cost)

    async def _check_left(self, grant: GrantSnapshot, length: int) -> None:
        for dimension, n in self._needs(grant, length)[2].items():
            left = await self.pool.fetchval(_LEFT, grant.id, dimension, SPEND)
            if left is not None and n > left:
                raise QuotaExhausted(
                    f"this download needs {n} {dimension}; {max(left, 0)} are left of the"
                    " grant's quota: ask a shorter range",
                    extensions={"dimension": dimension, "needed": n, "left": max(left, 0)},
                )

    async def _metered(
        self, grant: GrantSnapshot, blob: StoredBlob, start: int, end: int, detail: dict[str, Any]
    ) -> AsyncGenerator[bytes, None]:
        """The bytes ``[start, end)`` in pieces, each taken from the leases and recorded before
        any of it is yielded (module docstring: the order, what an interruption costs). A piece
        is whole records, the first one record and each next one twice the last, up to
        `MAX_PIECE_BYTES`; its record is committed while its records are read and decrypted."""
        size = blob.chunk_bytes
        target = size
        offset = start
        checked = time.monotonic()
        async with contextlib.aclosing(self.store.read(blob, start, end)) as parts:
            while offset < end:
                if time.monotonic() - checked >= GRANT_RECHECK_SECONDS:
                    await self._recheck(grant.id)
                    checked = time.monotonic()
                length = min(end, -(-(offset + target) // size) * size) - offset
                metering = asyncio.ensure_future(self._meter(grant, offset, length, detail))
                try:
                    piece, got = [], 0
                    while got < length:
                        piece.append(await anext(parts))
                        got += len(piece[-1])
                except BaseException:
                    metering.add_done_callback(_retrieved)
                    raise
                await metering
                for record in piece:
                    for at in range(0, len(record), SEND_BYTES):
                        yield record[at : at + SEND_BYTES]
                offset += length
                target = min(2 * target, MAX_PIECE_BYTES)

    async def _recheck(self, grant_id: uuid.UUID) -> None:
        """Stop a running download whose grant was suspended or ended meanwhile."""
        current = await self.grants.snapshot(grant_id)
        if current is None:
            raise NotFound(f"grant {grant_id} is gone")
        self._check_live(current)

    async def _meter(
        self, grant: GrantSnapshot, offset: int, length: int, detail: dict[str, Any]
    ) -> None:
        """Take one piece's units from the leases and commit its usage record."""
        units, cost, needs = self._needs(grant, length)
        taken = await self.leases.take(grant.id, needs) if needs else {}
        usage = UsageRecord(
            id=uuid.uuid4(), grant_id=grant.id, served_at=self.clock.now(), units=units,
            leases=sorted(taken.values()), cost_millifen=cost,
            detail=detail | {"range": f"bytes {offset}-{offset + length - 1}"},
        )  # fmt: skip
        try:
            await self.usage.record(usage)
        finally:
            # Spent whether or not the record went in: a record cut off by a cancellation may
            # still commit, and a lease must never be overspent.
            if taken:
                await asyncio.shield(self.leases.done(grant.id, taken))


def _retrieved(task: asyncio.Future[None]) -> None:
    """A piece's metering that nobody waits for any more (its download failed meanwhile): its
    outcome is read, so asyncio does not log it as lost."""
    if not task.cancelled():
        task.exception()


async def stage_revision_files(
    pool: asyncpg.Pool, store: BlobStore, product_id: uuid.UUID, revision: int, folder: Path,
) -> dict[str, Path]:  # fmt: skip
    """Decrypt every stored file of a revision into ``folder`` (the caller's private folder) as
    files everyone may read (0644, so the compute sandbox can hard-link them); name → path."""
    rows = await pool.fetch(
        "SELECT f.name, b.sha256, b.size_bytes, b.wrapped_key, b.chunk_bytes"
        "  FROM delivery_files f JOIN delivery_blobs b ON b.sha256 = f.sha256"
        " WHERE f.product_id = $1 AND f.revision = $2 ORDER BY f.name",
        product_id, revision,
    )  # fmt: skip
    staged: dict[str, Path] = {}
    for row in rows:
        blob = StoredBlob(row["sha256"], row["size_bytes"], bytes(row["wrapped_key"]),
                          row["chunk_bytes"])  # fmt: skip
        path = folder / row["name"]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as out:
            if blob.size_bytes:
                async for piece in store.read(blob, 0, blob.size_bytes):
                    out.write(piece)
        path.chmod(0o644)  # whatever the umask
        staged[row["name"]] = path
    return staged


async def _nothing() -> AsyncIterator[bytes]:
    empty: tuple[bytes, ...] = ()
    for piece in empty:
        yield piece


async def _rest(
    first: bytes, pieces: AsyncGenerator[bytes, None], grant_id: uuid.UUID
) -> AsyncIterator[bytes]:
    """The body once its status is sent: a refusal now can only stop it short (the client sees
    fewer bytes than Content-Length and is metered for what it got)."""
    yield first
    try:
        async for piece in pieces:
            yield piece
    except DataexError as stop:  # a quota, the grant, a record refused, a damaged record
        log.warning("download_cut", grant=str(grant_id), code=stop.code, detail=stop.detail)
    finally:
        await pieces.aclose()
