"""``dataex ledger verify | export | verify-receipt``: check the ledger without trusting the API.

``verify`` recomputes every leaf hash, the hash chain, the Merkle root at every signed tree head,
each head's signature (with the keys in the database, or the export's JWKS) and the consistency
of successive heads; from the database it also checks the books: every movement sums to zero,
every balance equals the sum of its postings, and each metered trade's reservation and postings
are what its movements say (never more posted than reserved); and that every trade executed
(its dx.trade.executed published, as the outbox keeps it) longer than the reconciler's bound ago
has exactly one settlement outcome: a ``settlement_trades`` row and one ledger entry opening it
(reserved or failed), not none (lost, or dead-lettered) and not two. ``verify-receipt`` needs only
the receipt and the exchange's JWKS. Exit status: 0 verified, 1 a problem found (each named by
sequence number), 2 unreadable input. The database's checks are `settlement.verification`'s,
which the staff console runs too.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

from exchange.platform.signing import b64url_decode
from settlement.ledger import Problem, ReceiptInvalid, Verifier, verify_receipt
from settlement.verification import CHUNK, DEFAULT_AFTER_SECONDS, entry_chunks, verify_snapshot

EXPORT_TYPE = "dataex.ledger.export.v1"


class ExportHeader(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: str
    jwks: dict[str, Any]


class ExportEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    seq: int
    entry: msgspec.Raw  # the canonical bytes exactly as stored


class ExportTreeHead(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tree_head: str


async def verify_database(
    database_url: str,
    out: IO[str],
    *,
    executed_subject: str | None = None,
    after_seconds: float = DEFAULT_AFTER_SECONDS,
) -> int:
    """Verify the ledger and the books in one snapshot, and that every trade executed (on
    ``executed_subject``; None: any subject prefix) more than ``after_seconds`` ago has exactly
    one settlement outcome (`settlement.verification`)."""
    from exchange.platform.db import connect  # verifying a file or a receipt needs no driver

    started = time.perf_counter()
    conn = await connect(database_url)
    try:
        result = await verify_snapshot(
            conn, executed_subject=executed_subject, after_seconds=after_seconds
        )
    finally:
        await conn.close()
    return _report(
        result.verifier, result.tree_heads, time.perf_counter() - started, out, books=True,
        trades=result.trades,
    )  # fmt: skip


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        yield from handle


def verify_export(path: Path, out: IO[str]) -> int:
    started = time.perf_counter()
    lines = _lines(path)
    try:
        header = msgspec.json.decode(next(lines), type=ExportHeader)
    except (StopIteration, msgspec.DecodeError, msgspec.ValidationError) as error:
        out.write(f"not a dataex ledger export: {error}\n")
        return 2
    if header.type != EXPORT_TYPE:
        out.write(f"not a dataex ledger export: type {header.type!r}\n")
        return 2
    verifier = Verifier()
    heads: list[tuple[int, bytes | None, str]] = []
    entry_decoder = msgspec.json.Decoder(ExportEntry)
    batch: list[tuple[int, bytes, bytes | None]] = []
    for number, line in enumerate(lines, start=2):
        if line.startswith(b'{"seq"'):
            try:
                item = entry_decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                verifier.problems.append(Problem(None, f"line {number}: {error}"))
                continue
            batch.append((item.seq, bytes(item.entry), None))
            if len(batch) == CHUNK:
                verifier.feed(batch)
                batch = []
        else:
            try:
                head = msgspec.json.decode(line, type=ExportTreeHead)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                verifier.problems.append(Problem(None, f"line {number}: {error}"))
                continue
            claims = json.loads(b64url_decode(head.tree_head.split(".")[1]))
            heads.append((int(claims.get("tree_size", 0)), None, head.tree_head))
    verifier.feed(batch)
    checked = verifier.tree_heads(sorted(heads, key=lambda h: h[0]), header.jwks)
    return _report(verifier, checked, time.perf_counter() - started, out, books=False)


def _report(
    verifier: Verifier,
    heads: int,
    seconds: float,
    out: IO[str],
    *,
    books: bool,
    trades: int | None = None,
) -> int:
    what = f"{verifier.entries} entries, {heads} signed tree heads" + (
        ", the books" if books else ""
    )
    if trades is not None:
        what += f", {trades} executed trades' outcomes"
    if not verifier.problems:
        out.write(f"ledger verified: {what} in {seconds:.2f}s\n")
        return 0
    out.write(f"ledger NOT verified: {len(verifier.problems)} problem(s) in {what}\n")
    for problem in verifier.problems:
        where = f"entry {problem.seq}: " if problem.seq is not None else ""
        out.write(f"  {where}{problem.message}\n")
    return 1


async def export(database_url: str, path: Path, out: IO[str]) -> int:
    from exchange.platform.db import connect

    conn = await connect(database_url)
    count = 0
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            keys = {"keys": [r["public_jwk"] for r in await conn.fetch(
                "SELECT public_jwk FROM signing_keys ORDER BY created_at DESC, kid")]}  # fmt: skip
            with path.open("wb") as handle:
                handle.write(msgspec.json.encode(ExportHeader(EXPORT_TYPE, keys)) + b"\n")
                async for rows in entry_chunks(conn):
                    handle.writelines(b'{"seq":%d,"entry":%b}\n' % (seq, body)
                                      for seq, body, _leaf in rows)  # fmt: skip
                    count += len(rows)
                for head in await conn.fetch(
                    "SELECT jws FROM ledger_tree_heads ORDER BY tree_size"
                ):
                    handle.write(msgspec.json.encode(ExportTreeHead(head["jws"])) + b"\n")
    finally:
        await conn.close()
    out.write(f"exported {count} entries to {path}\n")
    return 0


def load_jwks(source: str) -> dict[str, Any]:
    """A JWKS from a file or an http(s) URL (the exchange's /.well-known/jwks.json)."""
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=10) as response:  # noqa: S310
            data: dict[str, Any] = json.loads(response.read())
            return data
    loaded: dict[str, Any] = json.loads(Path(source).read_text(encoding="utf-8"))
    return loaded


def verify_receipt_file(path: Path, jwks_source: str, out: IO[str]) -> int:
    try:
        data = path.read_bytes()
        keys = load_jwks(jwks_source)
    except (OSError, ValueError) as error:
        out.write(f"cannot read: {error}\n")
        return 2
    try:
        receipt = verify_receipt(data, keys)
    except ReceiptInvalid as error:
        out.write(f"receipt NOT verified: {error}\n")
        return 1
    steps = ", ".join(f"{e.entry.step} (entry {e.entry.seq})" for e in receipt.entries)
    statements = (
        f"; {len(receipt.statements)} usage statement(s) signed and registered"
        if receipt.statements
        else ""
    )
    out.write(
        f"receipt verified: trade {receipt.trade_id} on {receipt.exchange}: {steps}{statements}\n"
    )
    return 0
