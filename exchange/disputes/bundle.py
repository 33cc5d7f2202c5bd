# ruff: noqa: RUF001  (the README's Chinese text has its own punctuation)
"""A dispute's evidence bundle: one tar a court or an arbitrator can check offline.

The archive is an uncompressed POSIX (ustar) tar whose members come in this order:

- ``README.txt``: what this is and how to verify it (Chinese and English; fixed text);
- ``manifest.json``: RFC 8785 canonical JSON ``{type, exchange, dispute, exported_at, items}``,
  each item ``{index, kind, name, media_type, sha256, size, submitter, submitter_org_id,
  submitted_at, ledger_seq, path}``;
- ``manifest.jws``: the exchange's detached compact JWS (RFC 7515 Appendix F, EdDSA, typ
  ``dataex-dispute-bundle+jws``) over the manifest's bytes;
- ``ledger.json``: canonical ``{entries: [{entry, inclusion_proof}], tree_head}``: a tree head
  signed by the exchange (typ ``dataex-tree-head+jws``) and every ledger entry of the dispute,
  byte for byte as the ledger holds it, with its RFC 6962 inclusion proof against that head;
- ``items/<index, 3 digits>-<sha256>``: each item's bytes, in manifest order.

An item is bound three ways: its bytes hash to the manifest's sha256, the manifest is signed,
and a ledger entry (step ``evidence``, ``statement_digest`` = ``sha256:<hex>``, the dispute's
``dispute_id`` and ``trade_id``) registered that digest inside the signed Merkle tree. Checking
needs only the exchange's JWKS; `verify_bundle` stops at the first problem and names it (an
item by its index and name). Pure: no database, and no import of settlement (the leaf hash and
the inclusion check are `exchange.platform.merkle`'s).

Writing streams each file into the archive in 1 MiB chunks, hashing as it goes (a stored file
that no longer matches its digest stops the export); the archive's length is known before
(`bundle_size`, `PreparedBundle.size`), and `PreparedBundle.pieces` gives its bytes to whoever
pulls them (the API streams them: `exchange.disputes.export`). `check_item` reads an item's file
once to check it before an export starts. Verifying hashes the members where they lie (a memory
map of the file), so a 50 MiB bundle is read once and copied never.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import mmap
import os
import re
import tarfile
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from exchange.platform.canonical import canonical_json, sha256_digest
from exchange.platform.disputes import LedgerProofs
from exchange.platform.merkle import leaf_hash, verify_inclusion
from exchange.platform.signing import (
    SigningError,
    b64url,
    b64url_decode,
    jws_header,
    verify_compact,
)

BUNDLE_TYPE = "dataex.dispute-bundle.v1"
MANIFEST_JWS_TYPE = "dataex-dispute-bundle+jws"
TREE_HEAD_TYPE = "dataex-tree-head+jws"  # settlement.ledger's tree heads
MEDIA_TYPE = "application/x-tar"
README_NAME = "README.txt"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.jws"
LEDGER_NAME = "ledger.json"
FIXED_MEMBERS = (README_NAME, MANIFEST_NAME, SIGNATURE_NAME, LEDGER_NAME)
CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")

README = (
    "dataex dispute evidence bundle (dataex.dispute-bundle.v1)\n\n"
    "manifest.json lists every evidence item of one dispute (SHA-256, size, submitter, time) in"
    " RFC 8785 canonical JSON; manifest.jws is the exchange's detached JWS (EdDSA) over it;"
    " ledger.json holds a tree head of the exchange's registration ledger, signed by the"
    " exchange, and every ledger entry of the dispute with its RFC 6962 inclusion proof, each"
    " item being registered by one entry; items/ holds the files in manifest order, each named"
    " by its index and SHA-256. To verify it offline with the exchange's public keys:\n"
    "    dataex dispute verify-bundle THIS.tar --jwks https://<exchange>/.well-known/jwks.json\n\n"
    "dataex 争议证据包（dataex.dispute-bundle.v1）\n\n"
    "manifest.json 以 RFC 8785 规范 JSON 列出一宗争议的全部证据（SHA-256 值、大小、提交方、提交"
    "时间）；manifest.jws 是交易所对其作出的分离式 JWS 签名（EdDSA）；ledger.json 载有交易所签名"
    "的登记账本树头，以及该争议的每条登记记录及其 RFC 6962 包含证明，每项证据均由一条记录登记；"
    "items/ 按清单顺序存放各证据文件，文件名为序号与 SHA-256 值。使用交易所公钥离线验证：\n"
    "    dataex dispute verify-bundle 本文件.tar --jwks https://<交易所>/.well-known/jwks.json\n"
).encode()


class BundleInvalid(ValueError):
    """A bundle does not verify (or cannot be written); the message names the first problem."""


@dataclass(frozen=True, slots=True)
class BundleItem:
    """One evidence item to export. ``path`` says where its bytes are; it is not in the
    manifest (the manifest gives the item's place in the archive instead)."""

    index: int  # 0-based, the manifest order (= registration order)
    kind: str  # party types (statement, …) or system kinds (contract, usage, …)
    name: str
    media_type: str
    sha256: str  # hex
    size: int
    submitter: str  # "buyer" | "seller" | "exchange" | "staff"
    submitter_org_id: str | None
    submitted_at: str  # RFC 3339 UTC
    ledger_seq: int
    path: Path


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """What a bundle that verifies says."""

    exchange: str
    dispute_id: str
    trade_id: str
    exported_at: str
    items: int
    tree_size: int
    signed_at: str  # the tree head's timestamp
    manifest: dict[str, Any]


class ManifestItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    index: int
    kind: str
    name: str
    media_type: str
    sha256: str
    size: int
    submitter: str
    submitter_org_id: str | None
    submitted_at: str
    ledger_seq: int
    path: str


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: str
    exchange: str
    dispute: dict[str, Any]
    exported_at: str
    items: list[ManifestItem]


class LedgerProof(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    entry: msgspec.Raw  # the entry's canonical bytes, exactly as the ledger holds them
    inclusion_proof: list[str]  # hex node hashes, RFC 6962 PATH(seq, tree_size)


class LedgerDocument(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    entries: list[LedgerProof]
    tree_head: str  # compact JWS of the tree head's claims


class TreeHeadClaims(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    exchange: str
    tree_size: int
    root_hash: str  # hex
    timestamp: str


class EntryView(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a ledger entry (settlement.ledger.LedgerEntry) a bundle checks."""

    seq: int
    exchange: str
    trade_id: str
    step: str
    statement_digest: str | None = None
    dispute_id: str | None = None
    refund_fen: int | None = None
    at: str | None = None


_SORTED = msgspec.json.Encoder(order="sorted")


def item_path(index: int, sha256: str) -> str:
    return f"items/{index:03d}-{sha256}"


def evidence_digest(sha256: str) -> str:
    """The ``statement_digest`` of the ledger entry that registers an item with this hex
    SHA-256 (the ledger's digests are ``sha256:<hex>``, as its usage statements')."""
    return "sha256:" + sha256


# --- writing ---------------------------------------------------------------------------------


def write_bundle(
    out: BinaryIO,
    *,
    exchange: str,
    dispute: Mapping[str, Any],
    items: Sequence[BundleItem],
    proofs: LedgerProofs,
    sign: Callable[[bytes], str],
    exported_at: str,
) -> None:
    """Write the bundle to ``out`` sequentially (no seek: a pipe or a response stream will do;
    ``out.write`` must consume what it is given before returning, as files do).

    ``dispute`` is the dispute as shown (at least ``id`` and ``trade_id``); ``items`` in their
    manifest order (``index`` = position); ``proofs`` the ledger entries of the dispute (each
    item's ``ledger_seq`` among them) against one signed tree head; ``sign`` makes the detached
    JWS over the manifest (``functools.partial(key.sign_detached, typ=MANIFEST_JWS_TYPE)``);
    ``exported_at`` RFC 3339 UTC, also the members' mtime. Raises `BundleInvalid` naming the
    item whose stored file is gone or no longer has its size or SHA-256 (the archive is then
    cut short if it had begun). The same as `prepare_bundle` and then `PreparedBundle.write`."""
    prepare_bundle(
        exchange=exchange, dispute=dispute, items=items, proofs=proofs, sign=sign,
        exported_at=exported_at,
    ).write(out)  # fmt: skip


def bundle_size(
    *,
    exchange: str,
    dispute: Mapping[str, Any],
    items: Sequence[BundleItem],
    proofs: LedgerProofs,
    sign: Callable[[bytes], str],
    exported_at: str,
) -> int:
    """How many bytes `write_bundle` writes for these arguments (a whole number of tar
    records), known before any item is read: the Content-Length of an export."""
    return prepare_bundle(
        exchange=exchange, dispute=dispute, items=items, proofs=proofs, sign=sign,
        exported_at=exported_at,
    ).size  # fmt: skip


@dataclass(frozen=True, slots=True)
class PreparedBundle:
    """A bundle whose manifest is signed and whose ledger part is made: all of it but the
    items' bytes, which `pieces` reads from their files as it goes. Made by `prepare_bundle`."""

    items: tuple[BundleItem, ...]
    manifest: bytes
    signature: str
    ledger: bytes
    mtime: int

    @property
    def size(self) -> int:
        """The archive's length in bytes: what `pieces` yields in all."""
        written = self._members_size() + 2 * tarfile.BLOCKSIZE  # two zero blocks end it
        return written + (-written % tarfile.RECORDSIZE)  # then zeros to a whole record

    def _members_size(self) -> int:
        return _archive_size(self.items, self.manifest, self.signature, self.ledger)

    def pieces(self) -> Generator[bytes | memoryview]:
        """The archive's bytes in order, each item's file read in `CHUNK`s and hashed on the
        way. A piece that is a memoryview is valid only until the next one is asked for (its
        buffer is reused): copy it or consume it first. Raises `BundleInvalid` naming the item
        whose stored file no longer has its size or SHA-256 (after its bytes, before its
        padding: the archive is cut short); closing the iterator early closes the file read."""
        for name, body in (
            (README_NAME, README),
            (MANIFEST_NAME, self.manifest),
            (SIGNATURE_NAME, self.signature.encode()),
            (LEDGER_NAME, self.ledger),
        ):
            yield _header(name, len(body), self.mtime)
            yield body
            yield _padding(len(body))
        buffer = memoryview(bytearray(CHUNK))
        for item in self.items:
            yield _header(item_path(item.index, item.sha256), item.size, self.mtime)
            yield from _item_chunks(item, buffer)
            yield _padding(item.size)
        yield b"\0" * (self.size - self._members_size())

    def write(self, out: BinaryIO) -> None:
        """Write the archive to ``out`` sequentially (see `write_bundle`)."""
        for piece in self.pieces():
            out.write(piece)


def prepare_bundle(
    *,
    exchange: str,
    dispute: Mapping[str, Any],
    items: Sequence[BundleItem],
    proofs: LedgerProofs,
    sign: Callable[[bytes], str],
    exported_at: str,
) -> PreparedBundle:
    """Check the arguments (see `write_bundle`), each stored file's size among them (a
    `BundleInvalid` naming the item, or one gone), make and sign the manifest and make the
    ledger part. Nothing of the items' bytes is read yet."""
    if not isinstance(dispute.get("id"), str) or not isinstance(dispute.get("trade_id"), str):
        raise TypeError("the dispute needs its id and trade_id (strings)")
    entries = [_ledger_proof(body, proof) for body, proof in proofs.entries]
    for position, item in enumerate(items):
        if item.index != position or not _HEX64.fullmatch(item.sha256):
            raise ValueError(f"item {position} ({item.name}): bad index or sha256")
        try:
            size = item.path.stat().st_size
        except OSError as error:
            raise _unreadable(item, error) from error
        if size != item.size:
            raise BundleInvalid(f"item {item.index} ({item.name}): the stored file's size is not"
                                f" {item.size} bytes")  # fmt: skip
    manifest = canonical_json(
        Manifest(type=BUNDLE_TYPE, exchange=exchange, dispute=dict(dispute),
                 exported_at=exported_at, items=[_manifest_item(item) for item in items])
    )  # fmt: skip
    signature = sign(manifest)
    parts = signature.split(".")
    if len(parts) != 3 or parts[1] or jws_header(signature).get("typ") != MANIFEST_JWS_TYPE:
        raise ValueError(f"sign must return a detached JWS of typ {MANIFEST_JWS_TYPE}")
    ledger = _SORTED.encode(LedgerDocument(entries=entries, tree_head=proofs.tree_head))
    mtime = int(datetime.fromisoformat(exported_at).timestamp())
    return PreparedBundle(tuple(items), manifest, signature, ledger, mtime)


def check_item(item: BundleItem) -> None:
    """Read an item's stored file once, in `CHUNK`s: `BundleInvalid` naming the item unless it
    has the item's size and SHA-256 (or if it cannot be read). Checking every item before an
    export starts answers a damaged store before the first byte is sent."""
    try:
        with item.path.open("rb", buffering=0) as source:
            if os.fstat(source.fileno()).st_size != item.size:
                raise BundleInvalid(f"item {item.index} ({item.name}): the stored file's size"
                                    f" is not {item.size} bytes")  # fmt: skip
            buffer = memoryview(bytearray(min(CHUNK, item.size)))
            for _chunk in _read_hashed(source, item, buffer):
                pass
    except OSError as error:
        raise _unreadable(item, error) from error


def _unreadable(item: BundleItem, error: OSError) -> BundleInvalid:
    return BundleInvalid(f"item {item.index} ({item.name}): the stored file cannot be read:"
                         f" {error.strerror or error}")  # fmt: skip


def _manifest_item(item: BundleItem) -> ManifestItem:
    return ManifestItem(
        index=item.index, kind=item.kind, name=item.name, media_type=item.media_type,
        sha256=item.sha256, size=item.size, submitter=item.submitter,
        submitter_org_id=item.submitter_org_id, submitted_at=item.submitted_at,
        ledger_seq=item.ledger_seq, path=item_path(item.index, item.sha256),
    )  # fmt: skip


def _ledger_proof(body: bytes, proof: Sequence[str]) -> LedgerProof:
    if _SORTED.encode(msgspec.json.decode(body)) != body:
        raise ValueError("a ledger entry is not in its canonical form")
    return LedgerProof(entry=msgspec.Raw(body), inclusion_proof=list(proof))


def _header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, mtime, 0o644, tarfile.REGTYPE
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def _blocks(size: int) -> int:
    return tarfile.BLOCKSIZE + size + (-size % tarfile.BLOCKSIZE)


def _archive_size(
    items: Sequence[BundleItem], manifest: bytes, signature: str, ledger: bytes
) -> int:
    fixed = (len(README), len(manifest), len(signature), len(ledger))
    return sum(map(_blocks, fixed)) + sum(_blocks(item.size) for item in items)


def _item_chunks(item: BundleItem, buffer: memoryview) -> Iterator[memoryview]:
    """An item's file in chunks of at most ``buffer``'s size (views of it), its SHA-256 checked
    on the way: `BundleInvalid` after the last chunk if it is not the item's."""
    with item.path.open("rb", buffering=0) as source:
        yield from _read_hashed(source, item, buffer)


def _read_hashed(source: io.FileIO, item: BundleItem, buffer: memoryview) -> Iterator[memoryview]:
    digest = hashlib.sha256()
    remaining = item.size
    while remaining:
        count = source.readinto(buffer[: min(len(buffer), remaining)])
        if not count:
            raise BundleInvalid(f"item {item.index} ({item.name}): the stored file is shorter"
                                f" than {item.size} bytes")  # fmt: skip
        chunk = buffer[:count]
        digest.update(chunk)
        yield chunk
        remaining -= count
    if digest.hexdigest() != item.sha256:
        raise BundleInvalid(
            f"item {item.index} ({item.name}): the stored file no longer has its sha256"
        )


# --- verifying -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Member:
    name: str
    offset: int  # of its data
    size: int


@contextlib.contextmanager
def _archive(source: Path | bytes) -> Iterator[tuple[list[_Member], memoryview]]:
    """The archive's members (regular files, in order) and all its bytes, without copying them
    (a memory map of a file). Raises `BundleInvalid` if it is not a well-formed tar."""
    with contextlib.ExitStack() as stack:
        if isinstance(source, bytes):
            handle: BinaryIO = io.BytesIO(source)
            data = memoryview(source)
        else:
            handle = stack.enter_context(source.open("rb"))
            mapped = _map(handle)
            stack.callback(_close, mapped)
            data = memoryview(mapped)
        stack.callback(data.release)
        yield _members(handle, data), data


def _map(handle: BinaryIO) -> mmap.mmap | bytes:
    try:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # empty, or not a regular file
        handle.seek(0)
        return handle.read()


def _close(mapped: mmap.mmap | bytes) -> None:
    if isinstance(mapped, mmap.mmap):
        with contextlib.suppress(BufferError):  # a view still held by a traceback: GC closes it
            mapped.close()


def _members(handle: BinaryIO, data: memoryview) -> list[_Member]:
    try:
        with tarfile.open(fileobj=handle, mode="r:") as tar:
            infos = tar.getmembers()
            end = tar.offset
    except (tarfile.TarError, EOFError, ValueError) as error:
        raise BundleInvalid(f"not a well-formed tar archive: {error}") from error
    members = []
    for info in infos:
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise BundleInvalid(f"the archive's member {info.name} is not a regular file")
        if info.offset_data + info.size > len(data):
            raise BundleInvalid(f"the archive is cut short in member {info.name}")
        members.append(_Member(info.name, info.offset_data, info.size))
    # tarfile stops quietly at a damaged header: whatever follows the last member is zeros.
    zeros = bytes(min(CHUNK, max(len(data) - end, 0)))
    for start in range(end, len(data), CHUNK):
        chunk = data[start : start + CHUNK]
        if chunk != zeros[: len(chunk)]:
            raise BundleInvalid("the archive has data after its last member (a damaged header?)")
    return members


def verify_bundle(source: Path | bytes, jwks: Mapping[str, Any]) -> VerifiedBundle:
    """Check a bundle with only the exchange's JWKS: the archive's layout, the manifest's
    canonical form and signature, the tree head's signature, then each item in manifest order
    (its place in the archive, size, SHA-256, the ledger entry registering it and that entry's
    inclusion in the signed tree), the dispute's other ledger entries, and that nothing else is
    in the archive. Raises `BundleInvalid` naming the first problem."""
    keys = dict(jwks)
    with _archive(source) as (members, data):
        names = [member.name for member in members]
        for position, name in enumerate(FIXED_MEMBERS):
            _expect(members, names, position, name, name)
        if _body(data, members[0]) != README:
            raise BundleInvalid(f"{README_NAME} is not the bundle's text")
        manifest_bytes = _body(data, members[1]).tobytes()
        manifest, document = _manifest(manifest_bytes, _body(data, members[2]).tobytes(), keys)
        ledger = _Ledger(_body(data, members[3]).tobytes(), manifest, keys)
        for item in manifest.items:
            member = _expect(members, names, len(FIXED_MEMBERS) + item.index, item.path,
                             f"item {item.index} ({item.name})")  # fmt: skip
            _check_item(item, _body(data, member), ledger)
        _check_outcome(manifest.dispute, ledger)
        ledger.check_the_rest()
        if len(members) > len(FIXED_MEMBERS) + len(manifest.items):
            extra = members[len(FIXED_MEMBERS) + len(manifest.items)]
            raise BundleInvalid(f"the archive has a member not in the manifest: {extra.name}")
        return VerifiedBundle(
            exchange=manifest.exchange, dispute_id=ledger.dispute_id, trade_id=ledger.trade_id,
            exported_at=manifest.exported_at, items=len(manifest.items),
            tree_size=ledger.head.tree_size, signed_at=ledger.head.timestamp, manifest=document,
        )  # fmt: skip


def _body(data: memoryview, member: _Member) -> memoryview:
    return data[member.offset : member.offset + member.size]


def _expect(
    members: list[_Member], names: list[str], position: int, name: str, what: str
) -> _Member:
    """The member at ``position``, which must be ``name``: else missing, or out of place."""
    if position < len(names) and names[position] == name:
        return members[position]
    raise BundleInvalid(f"{what} is out of place" if name in names else f"{what} is missing")


def _strict_b64(part: str, what: str) -> None:
    try:
        if b64url(b64url_decode(part)) == part:
            return
    except ValueError:
        pass
    raise BundleInvalid(f"{what} is not canonical base64url")


def _manifest(
    body: bytes, signature: bytes, keys: dict[str, Any]
) -> tuple[Manifest, dict[str, Any]]:
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError as error:
        raise BundleInvalid(f"the manifest is not JSON: {error}") from error
    if not isinstance(document, dict) or canonical_json(document) != body:
        raise BundleInvalid("the manifest is not in its canonical (RFC 8785) form")
    token = signature.decode("ascii", "replace")
    parts = token.split(".")
    if len(parts) != 3 or parts[1]:
        raise BundleInvalid("the manifest's signature is not a detached compact JWS")
    _strict_b64(parts[0], "the manifest's signature")
    _strict_b64(parts[2], "the manifest's signature")
    try:
        verified = verify_compact(f"{parts[0]}.{b64url(body)}.{parts[2]}", keys)
    except (SigningError, ValueError) as error:
        raise BundleInvalid(f"the manifest's signature: {error}") from error
    if verified.header.get("typ") != MANIFEST_JWS_TYPE:
        raise BundleInvalid(f"the manifest's signature is not of typ {MANIFEST_JWS_TYPE}")
    try:
        manifest = msgspec.convert(document, Manifest)
    except msgspec.ValidationError as error:
        raise BundleInvalid(f"the manifest is not a dispute bundle's: {error}") from error
    if manifest.type != BUNDLE_TYPE:
        raise BundleInvalid(f"the manifest's type is {manifest.type!r}, not {BUNDLE_TYPE!r}")
    for field in ("id", "trade_id"):
        if not isinstance(manifest.dispute.get(field), str):
            raise BundleInvalid(f"the manifest's dispute has no {field}")
    for position, item in enumerate(manifest.items):
        if (
            item.index != position
            or not _HEX64.fullmatch(item.sha256)
            or item.path != item_path(item.index, item.sha256)
            or item.size < 0
        ):
            raise BundleInvalid(f"the manifest's item {position} ({item.name}) is malformed")
    return manifest, document


class _Ledger:
    """ledger.json, its tree head verified; entries checked as items claim them."""

    def __init__(self, body: bytes, manifest: Manifest, keys: dict[str, Any]) -> None:
        try:
            document = msgspec.json.decode(body, type=LedgerDocument)
            canonical = canonical_json(msgspec.json.decode(body)) == body
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise BundleInvalid(f"{LEDGER_NAME} is not valid: {error}") from error
        if not canonical:
            raise BundleInvalid(f"{LEDGER_NAME} is not in its canonical (RFC 8785) form")
        self.exchange = manifest.exchange
        self.dispute_id: str = manifest.dispute["id"]
        self.trade_id: str = manifest.dispute["trade_id"]
        self.head = _tree_head(document.tree_head, keys)
        if self.head.exchange != self.exchange:
            raise BundleInvalid(f"the tree head in {LEDGER_NAME} is another exchange's")
        self.root = bytes.fromhex(self.head.root_hash)
        self.entries: dict[int, tuple[EntryView, bytes, list[str]]] = {}
        for proof in document.entries:
            raw = bytes(proof.entry)
            try:
                entry = msgspec.json.decode(raw, type=EntryView)
            except msgspec.ValidationError as error:
                raise BundleInvalid(f"{LEDGER_NAME} has an entry that is not a ledger entry:"
                                    f" {error}") from error  # fmt: skip
            if entry.seq in self.entries:
                raise BundleInvalid(f"{LEDGER_NAME} has ledger entry {entry.seq} twice")
            self.entries[entry.seq] = (entry, raw, proof.inclusion_proof)
        self.claimed: dict[int, int] = {}  # seq -> the item it registers

    def check(self, seq: int, what: str) -> EntryView:
        """The entry ``seq`` is this dispute's and included in the signed tree."""
        found = self.entries.get(seq)
        if found is None:
            raise BundleInvalid(f"{what}: ledger entry {seq} is not in {LEDGER_NAME}")
        entry, raw, proof = found
        where = f"{what}: ledger entry {seq} in {LEDGER_NAME}"
        if entry.exchange != self.exchange or entry.trade_id != self.trade_id:
            raise BundleInvalid(f"{where} is another exchange's or trade's")
        if entry.dispute_id != self.dispute_id and (
            entry.dispute_id is not None or entry.step in ("evidence", "resolution")
        ):
            raise BundleInvalid(f"{where} is another dispute's")
        try:
            path = [bytes.fromhex(node) for node in proof]
        except ValueError as error:
            raise BundleInvalid(f"{where} has a proof that is not hex") from error
        if any(len(node) != 32 for node in path) or any(n != n.lower() for n in proof):
            raise BundleInvalid(f"{where} has a proof that is not 32-byte lower-case hex")
        if not verify_inclusion(leaf_hash(raw), seq, self.head.tree_size, path, self.root):
            raise BundleInvalid(
                f"{where} is not included in the signed tree of size {self.head.tree_size}"
            )
        return entry

    def check_the_rest(self) -> None:
        """Entries no item claimed: each is this dispute's (a resolution, say) and included; an
        evidence entry must be an item's (or evidence was left out of the manifest)."""
        for seq, (entry, _raw, _proof) in sorted(self.entries.items()):
            if seq in self.claimed:
                continue
            self.check(seq, f"the dispute's {entry.step} entry")
            if entry.step == "evidence":
                raise BundleInvalid(f"ledger entry {seq} in {LEDGER_NAME} registers evidence"
                                    " that is not in the manifest")  # fmt: skip


MONEY_STEPS = ("settled", "voided", "split", "refund")


def _check_outcome(dispute: Mapping[str, Any], ledger: _Ledger) -> None:
    """A resolved dispute's resolution and money, as the manifest states them, are what the
    ledger registered: the resolution's digest is the one over what the manifest says was
    decided, and its entry and the money's are in ``ledger.json``, this dispute's and included
    (so neither can be dropped from the bundle, nor the decision restated)."""
    digest, resolution = dispute.get("resolution_digest"), dispute.get("resolution")
    if digest is None and resolution is None:
        return  # not resolved (or withdrawn): nothing was decided
    what = "the dispute's resolution"
    if not isinstance(digest, str) or not isinstance(resolution, dict):
        raise BundleInvalid(f"{what} is incomplete in the manifest")
    expected = sha256_digest({"dispute_id": ledger.dispute_id, "trade_id": ledger.trade_id,
                              "resolution": resolution})  # fmt: skip
    if digest != expected:
        raise BundleInvalid(f"{what}: its digest is not the one over the resolution stated")
    seq = dispute.get("resolution_seq")
    if not isinstance(seq, int):
        raise BundleInvalid(f"{what}: the manifest names no ledger entry for it")
    entry = ledger.check(seq, what)
    if entry.step != "resolution" or entry.statement_digest != digest:
        raise BundleInvalid(f"{what}: ledger entry {seq} does not register its digest")
    ledger.claimed[seq] = -1
    money = dispute.get("money")
    if not isinstance(money, dict) or money.get("ledger_seq") is None:
        return  # nothing moved (a redelivery, an extension)
    seq = money["ledger_seq"]
    what = "the dispute's money"
    if not isinstance(seq, int):
        raise BundleInvalid(f"{what}: its ledger entry is not a number")
    entry = ledger.check(seq, what)
    refund = money.get("refund_fen")
    if (
        entry.step not in MONEY_STEPS
        or entry.dispute_id != ledger.dispute_id
        or (entry.step in ("split", "refund") and entry.refund_fen != refund)
    ):
        raise BundleInvalid(f"{what}: ledger entry {seq} is not the movement the manifest states")
    ledger.claimed[seq] = -1


def _tree_head(token: str, keys: dict[str, Any]) -> TreeHeadClaims:
    what = f"the tree head in {LEDGER_NAME}"
    parts = token.split(".")
    if len(parts) != 3:
        raise BundleInvalid(f"{what} is not a compact JWS")
    for part in parts:
        _strict_b64(part, what)
    try:
        verified = verify_compact(token, keys)
    except (SigningError, ValueError) as error:
        raise BundleInvalid(f"{what}: {error}") from error
    if verified.header.get("typ") != TREE_HEAD_TYPE:
        raise BundleInvalid(f"{what} is not of typ {TREE_HEAD_TYPE}")
    try:
        claims = msgspec.convert(verified.claims, TreeHeadClaims)
    except msgspec.ValidationError as error:
        raise BundleInvalid(f"{what} has claims that are not a tree head's: {error}") from error
    if not _HEX64.fullmatch(claims.root_hash) or claims.tree_size <= 0:
        raise BundleInvalid(f"{what} has a malformed root hash or size")
    return claims


def _check_item(item: ManifestItem, body: memoryview, ledger: _Ledger) -> None:
    what = f"item {item.index} ({item.name})"
    if len(body) != item.size:
        raise BundleInvalid(f"{what}: its size differs from the manifest")
    digest = hashlib.sha256()
    for start in range(0, len(body), CHUNK):  # the GIL is released for each chunk
        digest.update(body[start : start + CHUNK])
    if digest.hexdigest() != item.sha256:
        raise BundleInvalid(f"{what}: sha256 differs from the manifest")
    other = ledger.claimed.get(item.ledger_seq)
    if other is not None:
        raise BundleInvalid(f"{what}: ledger entry {item.ledger_seq} is item {other}'s")
    entry = ledger.check(item.ledger_seq, what)
    if entry.step != "evidence" or entry.statement_digest != evidence_digest(item.sha256):
        raise BundleInvalid(f"{what}: ledger entry {item.ledger_seq} in {LEDGER_NAME} does not"
                            " register it (step evidence, its sha256)")  # fmt: skip
    if entry.at != item.submitted_at:  # the time it was submitted is the ledger's, not a claim
        raise BundleInvalid(f"{what}: submitted at {item.submitted_at}, but registered in the"
                            f" ledger at {entry.at}")  # fmt: skip
    ledger.claimed[item.ledger_seq] = item.index
