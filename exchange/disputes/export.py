"""A dispute's evidence bundle streamed out of the API process, in bounded memory.

`check` reads every item's stored file once (each in one of this module's threads, in 1 MiB
chunks) before the answer starts, so that a damaged evidence store is still the 500 problem
``evidence_damaged`` naming the item, never a bundle that would not verify. `BundleExport` then
gives the archive (`exchange.disputes.bundle.PreparedBundle`, whose length is known: the
answer's Content-Length) as an async iterator of pieces of about 1 MiB, each taken from
`PreparedBundle.pieces` in one of those threads when the answer asks for it: the event loop
never reads or hashes a file, and nothing is read ahead of what the client takes, so an export
holds a few MiB whatever the bundle's size (the file buffer, the piece being made and the one
being sent). Once the answer is over — all sent, or the client gone — `BundleExport.aclose`
(the response's background task) closes what is open; a piece being made then is the last.

The race this leaves: a stored file changed between `check` and its streaming. Its SHA-256 is
checked again as it streams; a file no longer its item's cuts the export short (the iterator
raises, the server aborts the answer before its Content-Length) and ``dispute_evidence_damaged``
is logged. The 200 status line having gone out, nothing better can be told the client, whose tar
then fails ``dataex dispute verify-bundle``: acceptable, since a bundle that does not verify is
never taken for one that does.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final, TypeVar

from litestar.background_tasks import BackgroundTask
from litestar.response import Stream

from exchange.disputes.bundle import (
    CHUNK,
    MEDIA_TYPE,
    BundleInvalid,
    BundleItem,
    PreparedBundle,
    check_item,
)
from exchange.platform.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")

# The threads that read and hash the evidence of exports: a few, whatever the number of exports
# (a piece is a short task; exports take turns), and not the event loop's default executor.
_THREADS: Final = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dataex-bundle")
PIECE: Final = CHUNK  # what a piece of the answer holds, about (at most one more chunk)


async def in_thread(function: Callable[..., T], *args: object, **kwargs: object) -> T:
    """``function(*args, **kwargs)`` in one of the export threads."""
    return await asyncio.wrap_future(_THREADS.submit(function, *args, **kwargs))


async def check(items: Sequence[BundleItem]) -> None:
    """Every item's stored file has its size and SHA-256 (read once each, one chunk at a time):
    else `BundleInvalid` naming the first item that does not."""
    for item in items:
        await in_thread(check_item, item)


class BundleExport:
    """A bundle ready to stream: ``size`` bytes, given once by ``async for``."""

    def __init__(self, prepared: PreparedBundle, dispute_id: uuid.UUID) -> None:
        self.prepared = prepared
        self.dispute_id = dispute_id
        self.size: Final = prepared.size
        # Set once nothing of the export runs in a thread or holds a file open any more.
        self.finished = threading.Event()
        self._stream: AsyncGenerator[bytes] | None = None
        self._started = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._stream is not None:
            raise RuntimeError("a bundle export streams once")
        self._stream = self._pieces()
        return self._stream

    async def aclose(self) -> None:
        """The answer is over (sent, or the client gone): stop, closing what is open."""
        if self._stream is None:
            self._stream = self._pieces()  # so that it never streams
        await self._stream.aclose()
        if not self._started:  # nothing was read, nothing is open
            self.finished.set()

    async def _pieces(self) -> AsyncGenerator[bytes]:
        self._started = True
        pieces = self.prepared.pieces()
        step: Future[bytes] | None = None
        try:
            while True:
                step = _THREADS.submit(_take, pieces, PIECE)
                try:
                    piece = await asyncio.wrap_future(step)
                except (BundleInvalid, OSError):
                    # Changed on disk since it was checked (see the module's text): cut short.
                    log.exception("dispute_evidence_damaged", dispute_id=str(self.dispute_id),
                                  during="streaming")  # fmt: skip
                    raise
                step = None
                if not piece:
                    return
                yield piece
        finally:
            self._stop(pieces, step)

    def _stop(self, pieces: Generator[bytes | memoryview], step: Future[bytes] | None) -> None:
        """Close the archive's reading now, or once the piece being made is (a generator cannot
        be closed while it runs): in the thread that made it, or here if it never ran."""

        def close(_step: object = None) -> None:
            pieces.close()
            self.finished.set()

        if step is None:
            close()
        else:
            step.add_done_callback(close)  # called at once if it is done


def _take(pieces: Iterator[bytes | memoryview], limit: int) -> bytes:
    """The archive's next bytes: pieces up to ``limit`` or just past it (b"" at its end). The
    pieces are copied as they come (a memoryview's buffer is reused for the next one)."""
    taken: list[bytes] = []
    size = 0
    for piece in pieces:
        taken.append(bytes(piece))
        size += len(piece)
        if size >= limit:
            break
    return b"".join(taken)


def bundle_response(export: BundleExport, headers: dict[str, str] | None = None) -> Stream:
    """The answer streaming ``export``: a POSIX tar of known length, as an attachment."""
    return Stream(
        export,
        media_type=MEDIA_TYPE,
        headers={
            **(headers or {}),
            "Content-Length": str(export.size),
            "Content-Disposition": f'attachment; filename="dispute-{export.dispute_id}.tar"',
        },
        background=BackgroundTask(export.aclose),
    )
