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
sequence number), 2 unreadable input.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

from exchange.platform.signing import b64url_decode
from settlement.ledger import Problem, ReceiptInvalid, Verifier, verify_receipt

EXPORT_TYPE = "dataex.ledger.export.v1"
CHUNK = 50_000


class ExportHeader(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: str
    jwks: dict[str, Any]


class ExportEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    seq: int
    entry: msgspec.Raw  # the canonical bytes exactly as stored


class ExportTreeHead(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tree_head: str


async def _chunks(conn: Any) -> Any:
    """(seq, entry, leaf hash) rows in order, a chunk at a time."""
    after = -1
    while True:
        rows = await conn.fetch(
            "SELECT seq, entry, leaf_hash FROM ledger_entries WHERE seq > $1 ORDER BY seq LIMIT $2",
            after,
            CHUNK,
        )
        if not rows:
            return
        yield [(row[0], bytes(row[1]), bytes(row[2])) for row in rows]
        after = rows[-1][0]


BOOK_CHECKS: tuple[tuple[str, Callable[[Any], str]], ...] = (
    (
        "SELECT a.id, a.kind, a.org_id, a.balance, coalesce(s.total, 0) AS total FROM accounts a"
        " LEFT JOIN (SELECT account_id, sum(amount_fen) AS total FROM postings GROUP BY 1) s"
        " ON s.account_id = a.id WHERE a.balance <> coalesce(s.total, 0)",
        lambda r: (
            f"account {r['id']} ({r['kind']} of {r['org_id'] or 'the exchange'}): balance"
            f" {r['balance']} fen, postings sum to {r['total']} fen"
        ),
    ),
    (
        "SELECT movement_id, sum(amount_fen) AS total FROM postings GROUP BY 1"
        " HAVING sum(amount_fen) <> 0",
        lambda r: f"movement {r['movement_id']}: postings sum to {r['total']} fen, not zero",
    ),
    (
        # A metered trade's reservation is its reserve and top-ups, what it posted its usage
        # periods; together with what it released they never exceed it, and once it has ended
        # they account for all of it.
        "SELECT t.trade_id, t.reserved_fen, t.posted_fen, m.* FROM settlement_trades t"
        " CROSS JOIN LATERAL (SELECT"
        " coalesce(sum(amount_fen) FILTER (WHERE kind IN ('reserve', 'top_up')), 0)::bigint"
        " AS held,"
        " coalesce(sum(amount_fen) FILTER (WHERE kind = 'usage'), 0)::bigint AS used,"
        " coalesce(sum(amount_fen) FILTER (WHERE kind = 'release'), 0)::bigint AS released"
        " FROM movements WHERE trade_id = t.trade_id) m"
        " WHERE t.metered AND (t.reserved_fen <> m.held OR t.posted_fen <> m.used"
        " OR m.used + m.released > m.held"
        " OR (t.state IN ('settled', 'voided') AND m.used + m.released <> m.held))",
        lambda r: (
            f"metered trade {r['trade_id']}: reserved {r['reserved_fen']} fen and posted"
            f" {r['posted_fen']}, but its movements reserve {r['held']}, post {r['used']}"
            f" and release {r['released']}"
        ),
    ),
)


# The executed trades of a page (ids) that have no settlement outcome, or more than one: the
# trade's row, and how many ledger entries open it (reserved or failed; each trade has one).
OUTCOME_CHECK = (
    "SELECT x.trade_id, s.state, o.opened FROM unnest($1::uuid[]) AS x(trade_id)"
    " LEFT JOIN settlement_trades s ON s.trade_id = x.trade_id"
    " CROSS JOIN LATERAL (SELECT count(*) AS opened FROM ledger_entries e"
    " WHERE e.trade_id = x.trade_id AND e.step IN ('reserved', 'failed')) o"
    " WHERE s.trade_id IS NULL OR o.opened <> 1"
)
DEFAULT_AFTER_SECONDS = 60.0  # DATAEX_RECONCILE_AFTER_SECONDS's default


async def _outcome_problems(
    conn: Any, subject: str | None, after_seconds: float
) -> tuple[int, list[Problem]]:
    """(executed trades checked, a problem per trade executed more than ``after_seconds`` ago
    without exactly one settlement outcome), in the caller's snapshot."""
    import uuid

    from exchange.platform import outbox

    cutoff = await conn.fetchval("SELECT now() - make_interval(secs => $1)", after_seconds)
    checked = 0
    problems: list[Problem] = []
    cursor: tuple[Any, Any] | None = None
    while True:
        page = await outbox.published(
            conn, "trade.executed", subject=subject, after=cursor, before=cutoff, limit=CHUNK
        )
        if not page:
            return checked, problems
        cursor = (page[-1].published_at, page[-1].id)
        trades: dict[uuid.UUID, Any] = {}
        for event in page:
            try:
                trades.setdefault(uuid.UUID(event.event_subject or ""), event)
            except ValueError:
                why = f"its subject {event.event_subject!r} is not a trade id"
                problems.append(Problem(None, f"executed event {event.id}: {why}"))
        checked += len(trades)
        rows = await conn.fetch(OUTCOME_CHECK, list(trades))
        lost = [r["trade_id"] for r in rows if r["state"] is None]
        dead = {
            r["trade_id"]: r["error"]
            for r in await conn.fetch(
                "SELECT DISTINCT ON (trade_id) trade_id, error FROM settlement_failures"
                " WHERE trade_id = ANY($1::uuid[]) ORDER BY trade_id, id DESC",
                lost,
            )
        } if lost else {}  # fmt: skip
        for row in rows:
            trade, event = row["trade_id"], trades[row["trade_id"]]
            published = event.published_at.isoformat(timespec="seconds")
            if row["state"] is None:
                why = (f"dead-lettered ({dead[trade]})" if trade in dead
                       else "never settled")  # fmt: skip
                message = (f"executed trade {trade} has no settlement outcome: its"
                           f" dx.trade.executed was published {published}, {why}")  # fmt: skip
            else:
                message = (f"executed trade {trade} ({row['state']}) has {row['opened']}"
                           " ledger entries opening it (reserved or failed), not one")  # fmt: skip
            problems.append(Problem(None, message))


async def verify_database(
    database_url: str,
    out: IO[str],
    *,
    executed_subject: str | None = None,
    after_seconds: float = DEFAULT_AFTER_SECONDS,
) -> int:
    """Verify the ledger and the books in one snapshot, and that every trade executed (on
    ``executed_subject``; None: any subject prefix) more than ``after_seconds`` ago has exactly
    one settlement outcome."""
    from exchange.platform.db import connect  # verifying a file or a receipt needs no driver

    started = time.perf_counter()
    conn = await connect(database_url)
    try:
        verifier = Verifier()
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            async for rows in _chunks(conn):
                verifier.feed(rows)
            keys = {"keys": [r["public_jwk"] for r in await conn.fetch(
                "SELECT public_jwk FROM signing_keys")]}  # fmt: skip
            heads = await conn.fetch(
                "SELECT tree_size, root_hash, jws FROM ledger_tree_heads ORDER BY tree_size"
            )
            checked = verifier.tree_heads(
                ((h["tree_size"], bytes(h["root_hash"]), h["jws"]) for h in heads), keys
            )
            book_problems = [
                Problem(None, describe(row))
                for query, describe in BOOK_CHECKS
                for row in await conn.fetch(query)
            ]
            trades, trade_problems = await _outcome_problems(conn, executed_subject, after_seconds)
    finally:
        await conn.close()
    verifier.problems.extend(book_problems)
    verifier.problems.extend(trade_problems)
    return _report(verifier, checked, time.perf_counter() - started, out, books=True, trades=trades)


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
                async for rows in _chunks(conn):
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
