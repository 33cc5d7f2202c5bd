"""The evidence store: every item's bytes once, named by their SHA-256.

``<state_dir>/evidence/<sha[:2]>/<sha>``: written to a temporary file in the same folder,
fsynced, then renamed into place, so a reader never sees a partial item and a crash leaves at
most a temporary file. Content-addressed, so the same bytes (in any dispute) are stored once
and an item's name in the database is all it takes to find and check it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from exchange.platform.errors import DataexError


class EvidenceTooLarge(DataexError):
    status = 413
    code = "evidence_too_large"
    title = "The evidence item is larger than allowed"


@dataclass(frozen=True, slots=True)
class StoredItem:
    sha256: str  # hex
    size: int
    path: Path


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise EvidenceTooLarge(
            f"an evidence item is at most {max_bytes} bytes (DATAEX_DISPUTE_EVIDENCE_MAX_BYTES)",
            extensions={"max_bytes": max_bytes},
        )


def _discard(handle: IO[bytes]) -> None:
    handle.close()
    Path(handle.name).unlink(missing_ok=True)


class EvidenceStore:
    """Items under ``root`` (folders 0700, files 0600: the state folder is private)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        assert len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256), sha256
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put_bytes(self, body: bytes) -> StoredItem:
        sha = hashlib.sha256(body).hexdigest()
        target = self.path(sha)
        if not target.is_file():
            with self._temporary(target) as (handle, _):
                handle.write(body)
        return StoredItem(sha, len(body), target)

    async def put_stream(self, chunks: AsyncIterable[bytes], max_bytes: int) -> StoredItem:
        """Store what ``chunks`` yields; `EvidenceTooLarge` (413) past ``max_bytes``, and
        nothing is kept."""
        digest = hashlib.sha256()
        size = 0
        handle = self._incoming()
        try:
            async for chunk in chunks:
                size += len(chunk)
                _check_size(size, max_bytes)
                digest.update(chunk)
                handle.write(chunk)
            return self._keep(handle, digest.hexdigest(), size)
        except BaseException:
            _discard(handle)
            raise

    def _incoming(self) -> IO[bytes]:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return tempfile.NamedTemporaryFile(dir=self.root, prefix=".incoming-", delete=False)

    def _keep(self, handle: IO[bytes], sha256: str, size: int) -> StoredItem:
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        incoming, target = Path(handle.name), self.path(sha256)
        target.parent.mkdir(mode=0o700, exist_ok=True)
        if target.is_file():
            incoming.unlink()
        else:
            incoming.chmod(0o600)
            incoming.replace(target)
        return StoredItem(sha256, size, target)

    @contextlib.contextmanager
    def _temporary(self, target: Path) -> Iterator[tuple[IO[bytes], str]]:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle, name
                handle.flush()
                os.fsync(handle.fileno())
            Path(name).replace(target)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()
