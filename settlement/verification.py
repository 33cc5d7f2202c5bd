"""What `dataex ledger verify` checks in the database, in one read-only snapshot, as a result.

Every leaf hash, the hash chain, the Merkle root at every signed tree head, each head's
signature (with the keys in the database) and the consistency of successive heads; the books:
every movement sums to zero, every balance equals the sum of its postings, each metered
trade's reservation and postings are what its movements say (never more posted than reserved,
never more refunded by disputes than posted), and a trade split by a dispute's resolution took
all it held out of escrow;
and every trade executed (its dx.trade.executed published, as the outbox keeps it) longer than
the reconciler's bound ago has exactly one settlement outcome: a ``settlement_trades`` row and
one ledger entry opening it (reserved or failed), not none (lost, or dead-lettered) and not two.

`verify_snapshot` runs on the caller's connection, so the command (`settlement.cli`) and the
staff console run the same checks and read the same `Verification`. Hashing is CPU work: each
chunk of entries is checked in a worker thread, so an API process that verifies keeps answering
its other requests meanwhile (slower, as the GIL is shared).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from settlement.ledger import Problem, Verifier

CHUNK = 50_000
DEFAULT_AFTER_SECONDS = 60.0  # DATAEX_RECONCILE_AFTER_SECONDS's default
# `dataex bench ledger --entries 1000000` on the 2-core machine: 8.6 s (README, Performance).
SECONDS_PER_MILLION_ENTRIES = 8.6


def expected_seconds(entries: int) -> float:
    """About how long verifying a ledger of ``entries`` takes, at the measured rate (checking
    executed trades' outcomes adds about 2 s per 100,000 trades)."""
    return entries / 1_000_000 * SECONDS_PER_MILLION_ENTRIES


@dataclass
class Verification:
    """What one verification found. ``verifier`` holds the entries checked so far, so a caller
    that stops a verification early (a time limit) can still say how far it got."""

    verifier: Verifier = field(default_factory=Verifier)
    tree_heads: int = 0
    trades: int | None = None  # executed trades whose outcome was checked
    books: bool = False  # whether the books were checked (the database, not an export)
    seconds: float = 0.0

    @property
    def entries(self) -> int:
        return self.verifier.entries

    @property
    def problems(self) -> list[Problem]:
        return self.verifier.problems

    @property
    def ok(self) -> bool:
        return not self.verifier.problems


async def entry_chunks(conn: Any) -> Any:
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


def _split_problem(r: Any) -> str:
    kind = "metered" if r["metered"] else "fixed"
    if r["movement"] is None:
        return f"trade {r['trade_id']} ({r['state']}, {kind}): split, but no split movement"
    return (
        f"trade {r['trade_id']} ({r['state']}, {kind}): its split movement {r['movement']}"
        f" took {r['taken']} fen of escrow, the trade held {r['total']}"
    )


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
        " coalesce(sum(amount_fen) FILTER (WHERE kind = 'release'), 0)::bigint AS released,"
        " coalesce(sum(amount_fen) FILTER (WHERE kind = 'refund'), 0)::bigint AS refunded"
        " FROM movements WHERE trade_id = t.trade_id) m"
        " WHERE t.metered AND (t.reserved_fen <> m.held OR t.posted_fen <> m.used"
        " OR m.used + m.released > m.held OR m.refunded > m.used"
        " OR (t.state IN ('settled', 'voided') AND m.used + m.released <> m.held))",
        lambda r: (
            f"metered trade {r['trade_id']}: reserved {r['reserved_fen']} fen and posted"
            f" {r['posted_fen']}, but its movements reserve {r['held']}, post {r['used']},"
            f" release {r['released']} and refund {r['refunded']}"
        ),
    ),
    (
        # A trade a dispute's resolution split is in state split, not metered, and its split
        # movement took all of its escrow (price + fee); a split trade has that movement.
        "SELECT t.trade_id, t.state, t.metered, t.price_fen + t.fee_fen AS total,"
        " m.id AS movement, -coalesce(e.escrow, 0)::bigint AS taken"
        " FROM settlement_trades t"
        " LEFT JOIN movements m ON m.trade_id = t.trade_id AND m.kind = 'split'"
        " LEFT JOIN LATERAL (SELECT sum(p.amount_fen) AS escrow FROM postings p"
        " JOIN accounts a ON a.id = p.account_id WHERE p.movement_id = m.id"
        " AND a.kind = 'escrow') e ON true"
        " WHERE (t.state = 'split' OR m.id IS NOT NULL) AND (t.state <> 'split' OR t.metered"
        " OR m.id IS NULL OR coalesce(e.escrow, 0) <> -(t.price_fen + t.fee_fen))",
        _split_problem,
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


async def verify_snapshot(
    conn: Any,
    *,
    executed_subject: str | None = None,
    after_seconds: float = DEFAULT_AFTER_SECONDS,
    into: Verification | None = None,
) -> Verification:
    """Verify the ledger and the books in one read-only snapshot of ``conn``, and that every
    trade executed (on ``executed_subject``; None: any subject prefix) more than
    ``after_seconds`` ago has exactly one settlement outcome. ``into``: the result to fill
    (a caller that may stop early keeps it, to read the entries checked so far)."""
    result = into or Verification()
    result.books = True
    verifier = result.verifier
    started = time.perf_counter()
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            async for rows in entry_chunks(conn):
                await asyncio.to_thread(verifier.feed, rows)
            keys = {"keys": [r["public_jwk"] for r in await conn.fetch(
                "SELECT public_jwk FROM signing_keys")]}  # fmt: skip
            heads = await conn.fetch(
                "SELECT tree_size, root_hash, jws FROM ledger_tree_heads ORDER BY tree_size"
            )
            result.tree_heads = verifier.tree_heads(
                ((h["tree_size"], bytes(h["root_hash"]), h["jws"]) for h in heads), keys
            )
            book_problems = [
                Problem(None, describe(row))
                for query, describe in BOOK_CHECKS
                for row in await conn.fetch(query)
            ]
            result.trades, trade_problems = await _outcome_problems(
                conn, executed_subject, after_seconds
            )
        verifier.problems.extend(book_problems)
        verifier.problems.extend(trade_problems)
    finally:
        result.seconds = time.perf_counter() - started
    return result
