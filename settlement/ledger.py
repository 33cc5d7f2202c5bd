"""The registration ledger (登记): append-only, hash-chained, in an RFC 6962 Merkle tree, signed.

Every settlement step appends an entry. An entry carries its own sequence number (its leaf
index) and the leaf hash of the entry before it, so an entry that is altered, removed,
reordered or inserted is found by its number; the Merkle tree over all entries is signed every
N entries or T seconds (a tree head: size, root, time as a compact JWS by the exchange's key),
so anyone holding the JWKS can check a receipt, or two tree heads' consistency, without trusting
the database.

Entries hold only strings, integers and null, so their RFC 8785 form is msgspec's sorted-key
compact JSON (tested against the `rfc8785` package); that keeps verifying a million entries in
seconds. Fields added since the first entries (a metered trade's period and statement digest,
a dispute's id and refund) are optional and left out when unset, so every entry written
before them keeps its bytes.

A metered trade's receipt also carries its usage statements (each signed by the exchange): a
verifier checks each statement's signature and that its digest is the one its ledger entry
registered, so a statement cannot be swapped, dropped or added without the receipt failing.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from exchange.platform.canonical import canonical_json, sha256_digest
from exchange.platform.signing import (
    KeyRing,
    SigningError,
    b64url,
    b64url_decode,
    verify_compact,
)
from settlement.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion

if TYPE_CHECKING:  # verifying a receipt or an export needs no database driver
    from exchange.platform.db import Connection, Executor

LEDGER_LOCK = "dataex.ledger"
TREE_HEAD_LOCK = "dataex.ledger.tree_head"
TREE_HEAD_TYPE = "dataex-tree-head+jws"
RECEIPT_TYPE = "dataex.receipt.v1"
GENESIS_PREV = "0" * 64

# A trade's steps: reserved or failed, then settled or voided. A metered trade also registers
# each billing period (usage), each top-up of its reservation, and its end (released: what was
# not used goes back to the buyer; the trade is then settled, or voided if nothing was used).
# "job": a compute job's receipt under the trade's grant (its digest is statement_digest).
# A dispute over the trade registers each piece of evidence ("evidence") and its resolution
# ("resolution"), both by digest with the dispute's id and no money; a resolution that divides
# the escrow is "split", one that pays a metered trade's buyer back is "refund" (both with
# refund_fen); one that releases or refunds all of it is "settled" or "voided", as ever.
Step = Literal[
    "reserved",
    "failed",
    "settled",
    "voided",
    "usage",
    "top_up",
    "released",
    "job",
    "evidence",
    "resolution",
    "split",
    "refund",
]


class EntryParty(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    org_id: str
    uscc: str | None


class LedgerEntry(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """One settlement step as registered. ``seq`` is the leaf index, from 0.

    ``price_fen`` and ``fee_fen`` are what the step moves, split into the seller's part and the
    exchange's fee: a trade's price and fee for reserve, post and void; for a usage period its
    charge less the fee, and the fee; for a top-up or a release the amount, and 0. Only the
    fields with defaults (added later) are left out when unset (``omit_defaults``); the others
    are always written, null included, as in the first entries."""

    seq: int
    prev: str  # hex SHA-256 leaf hash of entry seq-1; 64 zeros for entry 0
    exchange: str
    trade_id: str
    step: Step
    contract_digest: str
    product_code: str
    buyer: EntryParty
    seller: EntryParty
    price_fen: int
    fee_fen: int
    movement_id: str | None
    at: str  # RFC 3339 UTC
    period: int | None = None  # usage: the billing period
    statement_digest: str | None = None  # usage: sha256 of the statement's canonical JSON
    dispute_id: str | None = None  # a dispute's steps (evidence, resolution, its money)
    refund_fen: int | None = None  # split, refund: what went back to the buyer


_CANONICAL = msgspec.json.Encoder(order="sorted")


def canonical(value: Any) -> bytes:
    """RFC 8785 form of a value made of strings, integers, booleans, null, lists and objects."""
    return _CANONICAL.encode(value)


def timestamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class EntryDraft:
    """What a settlement step knows; `append` gives it its place in the ledger."""

    trade_id: uuid.UUID
    step: Step
    contract_digest: str
    product_code: str
    buyer: EntryParty
    seller: EntryParty
    price_fen: int
    fee_fen: int
    movement_id: uuid.UUID | None
    period: int | None = None
    statement_digest: str | None = None
    dispute_id: uuid.UUID | None = None
    refund_fen: int | None = None


async def append(
    conn: Connection, exchange: str, drafts: Sequence[EntryDraft], at: datetime
) -> list[int]:
    """Append entries in the caller's transaction; returns their sequence numbers.

    The advisory lock serialises appends until commit, so numbers are gap-free and each entry's
    ``prev`` is the entry committed before it."""
    if not drafts:
        return []
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", LEDGER_LOCK)
    last = await conn.fetchrow(
        "SELECT seq, leaf_hash FROM ledger_entries ORDER BY seq DESC LIMIT 1"
    )
    seq = 0 if last is None else last["seq"] + 1
    prev = GENESIS_PREV if last is None else bytes(last["leaf_hash"]).hex()
    when = timestamp(at)
    seqs, trades, steps, bodies, leaves = [], [], [], [], []
    for draft in drafts:
        body = canonical(
            LedgerEntry(
                seq=seq,
                prev=prev,
                exchange=exchange,
                trade_id=str(draft.trade_id),
                step=draft.step,
                contract_digest=draft.contract_digest,
                product_code=draft.product_code,
                buyer=draft.buyer,
                seller=draft.seller,
                price_fen=draft.price_fen,
                fee_fen=draft.fee_fen,
                movement_id=None if draft.movement_id is None else str(draft.movement_id),
                at=when,
                period=draft.period,
                statement_digest=draft.statement_digest,
                dispute_id=None if draft.dispute_id is None else str(draft.dispute_id),
                refund_fen=draft.refund_fen,
            )
        )
        leaf = leaf_hash(body)
        seqs.append(seq)
        trades.append(draft.trade_id)
        steps.append(draft.step)
        bodies.append(body)
        leaves.append(leaf)
        seq += 1
        prev = leaf.hex()
    await conn.execute(
        "INSERT INTO ledger_entries (seq, trade_id, step, entry, leaf_hash, created_at)"
        " SELECT s, t, st, e, l, $6 FROM unnest($1::bigint[], $2::uuid[], $3::text[],"
        " $4::bytea[], $5::bytea[]) AS x(s, t, st, e, l)",
        seqs, trades, steps, bodies, leaves, at,
    )  # fmt: skip
    return seqs


_ENTRY_DECODER = msgspec.json.Decoder(LedgerEntry)


class TreeHeadClaims(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    exchange: str
    tree_size: int
    root_hash: str  # hex
    timestamp: str


class TreeHead(msgspec.Struct, frozen=True):
    tree_size: int
    root_hash: str
    timestamp: str
    kid: str
    jws: str


@dataclass
class LedgerTree:
    """This process's copy of the leaf hashes, brought up to date from the database on use.

    The table is append-only, so the copy only grows; if the database no longer holds the last
    leaf the copy knows (a test reset, a restored backup), the copy is rebuilt."""

    tree: MerkleTree = field(default_factory=MerkleTree)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def sync(self, conn: Executor) -> MerkleTree:
        async with self.lock:
            size = self.tree.size
            rows = await conn.fetch(
                "SELECT seq, leaf_hash FROM ledger_entries WHERE seq >= $1 ORDER BY seq",
                max(size - 1, 0),
            )
            if size and (
                not rows
                or rows[0]["seq"] != size - 1
                or bytes(rows[0]["leaf_hash"]) != (self.tree.leaf(size - 1))
            ):
                self.tree = MerkleTree()
                rows = await conn.fetch("SELECT seq, leaf_hash FROM ledger_entries ORDER BY seq")
            elif size:
                rows = rows[1:]
            for row in rows:
                if row["seq"] != self.tree.size:
                    raise LedgerCorrupt(
                        f"ledger entry {self.tree.size} is missing (found {row['seq']} next);"
                        " run `dataex ledger verify`"
                    )
                self.tree.append(bytes(row["leaf_hash"]))
            return self.tree


class LedgerCorrupt(RuntimeError):
    pass


_TREES: dict[str, LedgerTree] = {}


def tree_for(database_url: str | None) -> LedgerTree:
    """One leaf cache per database per process."""
    return _TREES.setdefault(database_url or "", LedgerTree())


def _tree_head(row: Any) -> TreeHead:
    claims = msgspec.json.decode(b64url_decode(row["jws"].split(".")[1]), type=TreeHeadClaims)
    return TreeHead(
        tree_size=row["tree_size"],
        root_hash=bytes(row["root_hash"]).hex(),
        timestamp=claims.timestamp,
        kid=row["kid"],
        jws=row["jws"],
    )


async def latest_tree_head(conn: Executor) -> TreeHead | None:
    row = await conn.fetchrow("SELECT * FROM ledger_tree_heads ORDER BY tree_size DESC LIMIT 1")
    return None if row is None else _tree_head(row)


async def tree_head(conn: Executor, size: int) -> TreeHead | None:
    row = await conn.fetchrow("SELECT * FROM ledger_tree_heads WHERE tree_size = $1", size)
    return None if row is None else _tree_head(row)


async def tree_heads(conn: Executor, after_size: int, limit: int) -> list[TreeHead]:
    rows = await conn.fetch(
        "SELECT * FROM ledger_tree_heads WHERE tree_size > $1 ORDER BY tree_size LIMIT $2",
        after_size, limit,
    )  # fmt: skip
    return [_tree_head(row) for row in rows]


async def sign_tree_head(
    conn: Connection,
    cache: LedgerTree,
    keyring: KeyRing,
    exchange: str,
    at: datetime,
    *,
    min_new: int = 1,
    max_age_seconds: float | None = None,
) -> TreeHead | None:
    """Sign a tree head over every committed entry if at least ``min_new`` entries are newer
    than the latest head (or, with ``max_age_seconds``, any are and the latest is that old).
    Call in a transaction; one signer at a time."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", TREE_HEAD_LOCK)
    latest = await conn.fetchrow(
        "SELECT tree_size, signed_at FROM ledger_tree_heads ORDER BY tree_size DESC LIMIT 1"
    )
    tree = await cache.sync(conn)
    covered = 0 if latest is None else latest["tree_size"]
    new = tree.size - covered
    if new <= 0:
        return None
    due = new >= min_new
    if not due and max_age_seconds is not None:
        due = latest is None or (at - latest["signed_at"]).total_seconds() >= max_age_seconds
    if not due:
        return None
    root = tree.root()
    claims = TreeHeadClaims(
        exchange=exchange, tree_size=tree.size, root_hash=root.hex(), timestamp=timestamp(at)
    )
    key = await keyring.current(conn)
    token = key.sign_compact(claims, typ=TREE_HEAD_TYPE)
    await conn.execute(
        "INSERT INTO ledger_tree_heads (tree_size, root_hash, signed_at, kid, jws)"
        " VALUES ($1, $2, $3, $4, $5)",
        tree.size, root, at, key.kid, token,
    )  # fmt: skip
    return TreeHead(tree.size, root.hex(), claims.timestamp, key.kid, token)


# --- receipts --------------------------------------------------------------------------------


class ReceiptEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    entry: LedgerEntry
    inclusion_proof: list[str]  # hex node hashes, RFC 6962 PATH(seq, tree_size)


class ReceiptStatement(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A metered trade's usage statement as signed, its digest (the one its ledger entry
    registered) and the exchange's compact JWS over it."""

    statement: dict[str, Any]
    digest: str
    jws: str


class Receipt(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A trade's ledger entries with inclusion proofs against one signed tree head, and a
    metered trade's usage statements (left out when there are none, so a receipt of any other
    trade is what it always was)."""

    type: str
    exchange: str
    trade_id: str
    entries: list[ReceiptEntry]
    tree_head: str  # compact JWS of TreeHeadClaims
    statements: list[ReceiptStatement] = []


def build_receipt(
    exchange: str,
    trade_id: str,
    entries: Sequence[bytes],
    tree: MerkleTree,
    head: TreeHead,
    statements: Sequence[tuple[bytes, str, str]] = (),
) -> bytes:
    """The canonical bytes of a receipt (a receipt is served and stored exactly as these).
    ``statements``: (canonical JSON, digest, JWS) of each usage statement, in period order."""
    items = []
    for body in entries:
        entry = msgspec.json.decode(body, type=LedgerEntry)
        proof = tree.inclusion_proof(entry.seq, head.tree_size)
        items.append(ReceiptEntry(entry=entry, inclusion_proof=[p.hex() for p in proof]))
    signed = [
        ReceiptStatement(statement=msgspec.json.decode(body), digest=digest, jws=jws)
        for body, digest, jws in statements
    ]
    return canonical(
        Receipt(type=RECEIPT_TYPE, exchange=exchange, trade_id=trade_id, entries=items,
                tree_head=head.jws, statements=signed)
    )  # fmt: skip


def verify_statement(
    statement: dict[str, Any], digest: str, token: str, jwks: dict[str, Any]
) -> None:
    """A usage statement's digest (SHA-256 over its canonical JSON) and its signature: a
    compact JWS whose payload is the statement, or a detached one (RFC 7515 Appendix F) over
    its canonical JSON, by a key of ``jwks``. Raises `ReceiptInvalid` saying what is wrong."""
    period = statement.get("period")
    if sha256_digest(statement) != digest:
        raise ReceiptInvalid(f"the statement of period {period} does not hash to its digest")
    parts = token.split(".")
    if len(parts) != 3:
        raise ReceiptInvalid(f"the signature of the statement of period {period} is not a JWS")
    if not parts[1]:
        token = f"{parts[0]}.{b64url(canonical_json(statement))}.{parts[2]}"
    try:
        verified = verify_compact(token, jwks)
    except SigningError as error:
        raise ReceiptInvalid(f"the statement of period {period}'s signature: {error}") from error
    if verified.claims != statement:
        raise ReceiptInvalid(f"the statement of period {period} is not the one signed")


class ReceiptInvalid(ValueError):
    pass


def _strict_b64(part: str) -> bytes:
    raw = b64url_decode(part)
    if b64url(raw) != part:
        raise ReceiptInvalid("the tree head is not canonical base64url")
    return raw


def _strict_hex(text: str, what: str) -> bytes:
    if len(text) != 64 or text != text.lower():
        raise ReceiptInvalid(f"{what} is not 64 lower-case hex digits")
    try:
        return bytes.fromhex(text)
    except ValueError as error:
        raise ReceiptInvalid(f"{what} is not hex") from error


def verify_tree_head(token: str, jwks: dict[str, Any]) -> TreeHeadClaims:
    """Verify a tree head's signature with a JWKS; strict about its encoding."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ReceiptInvalid("the tree head is not a compact JWS")
    for part in parts:
        _strict_b64(part)
    try:
        verified = verify_compact(token, jwks)
    except SigningError as error:
        raise ReceiptInvalid(f"the tree head's signature: {error}") from error
    if verified.header.get("typ") != TREE_HEAD_TYPE:
        raise ReceiptInvalid(f"the tree head's typ is not {TREE_HEAD_TYPE}")
    claims = msgspec.convert(verified.claims, TreeHeadClaims)
    _strict_hex(claims.root_hash, "the tree head's root hash")
    return claims


def verify_receipt(data: bytes, jwks: dict[str, Any]) -> Receipt:
    """Check a receipt with only the exchange's JWKS; raises `ReceiptInvalid` saying why."""
    body = data[:-1] if data.endswith(b"\n") else data
    try:
        receipt = msgspec.json.decode(body, type=Receipt)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise ReceiptInvalid(f"not a receipt: {error}") from error
    if canonical(receipt) != body:
        raise ReceiptInvalid("the receipt is not in its canonical (RFC 8785) form")
    if receipt.type != RECEIPT_TYPE:
        raise ReceiptInvalid(f"type is {receipt.type!r}, not {RECEIPT_TYPE!r}")
    claims = verify_tree_head(receipt.tree_head, jwks)
    if claims.exchange != receipt.exchange:
        raise ReceiptInvalid("the tree head is from another exchange")
    root = bytes.fromhex(claims.root_hash)
    if not receipt.entries:
        raise ReceiptInvalid("the receipt has no entries")
    for item in receipt.entries:
        entry = item.entry
        if entry.trade_id != receipt.trade_id or entry.exchange != receipt.exchange:
            raise ReceiptInvalid(f"entry {entry.seq} is not this trade's")
        proof = [_strict_hex(p, f"entry {entry.seq}'s proof") for p in item.inclusion_proof]
        leaf = leaf_hash(canonical(entry))
        if not verify_inclusion(leaf, entry.seq, claims.tree_size, proof, root):
            raise ReceiptInvalid(
                f"entry {entry.seq} is not included in the signed tree of {claims.tree_size}"
            )
    _verify_statements(receipt, jwks)
    return receipt


def _verify_statements(receipt: Receipt, jwks: dict[str, Any]) -> None:
    """Each usage statement is signed, is this trade's, and is the one a usage entry of the
    receipt registered (same digest, same period); each usage entry has its statement."""
    usage = {e.entry.statement_digest: e.entry for e in receipt.entries if e.entry.step == "usage"}
    seen: set[str] = set()
    for item in receipt.statements:
        statement = item.statement
        period = statement.get("period")
        verify_statement(statement, item.digest, item.jws, jwks)
        if (
            statement.get("trade_id") != receipt.trade_id
            or statement.get("exchange") != receipt.exchange
        ):
            raise ReceiptInvalid(f"the statement of period {period} is not this trade's")
        entry = usage.get(item.digest)
        if entry is None or entry.period != period or item.digest in seen:
            raise ReceiptInvalid(
                f"the statement of period {period} is not registered by a usage entry of the"
                " receipt"
            )
        seen.add(item.digest)
    for digest, entry in usage.items():
        if digest not in seen:
            raise ReceiptInvalid(f"usage entry {entry.seq} has no statement in the receipt")


# --- verification of the whole ledger --------------------------------------------------------


class Problem(msgspec.Struct, frozen=True):
    seq: int | None
    message: str


@dataclass
class Verifier:
    """Feed entries in sequence order, then the tree heads; collects every problem found."""

    exchange: str | None = None
    tree: MerkleTree = field(default_factory=MerkleTree)
    problems: list[Problem] = field(default_factory=list)
    _prev: str = GENESIS_PREV
    _entries: int = 0

    def feed(self, rows: Sequence[tuple[int, bytes, bytes | None]]) -> None:
        """`entry` for many rows: a tight loop for entries that check out, the full checks for
        any that does not."""
        decode = _ENTRY_DECODER.decode
        encode = _CANONICAL.encode
        sha256 = hashlib.sha256
        leaves: list[bytes] = []
        expected = self.tree.size
        prev = self._prev
        exchange = self.exchange
        for index, (seq, body, stored) in enumerate(rows):
            leaf = sha256(b"\x00" + body).digest()
            try:
                entry = decode(body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                entry = None
            if (
                entry is None
                or seq != expected
                or entry.seq != seq
                or entry.prev != prev
                or (stored is not None and stored != leaf)
                or (exchange is not None and entry.exchange != exchange)
                or encode(entry) != body
            ):
                self.tree.extend(leaves)
                self._prev = prev
                self._entries += len(leaves)
                for slow in rows[index:]:
                    self.entry(*slow)
                return
            leaves.append(leaf)
            prev = leaf.hex()
            expected += 1
        self.tree.extend(leaves)
        self._prev = prev
        self._entries += len(leaves)

    def entry(self, seq: int, body: bytes, stored_leaf: bytes | None) -> None:
        self._entries += 1
        expected = self.tree.size
        if seq > expected:
            self.problems.append(
                Problem(expected, f"entries {expected}..{seq - 1} are missing (removed)")
            )
        elif seq < expected:
            self.problems.append(Problem(seq, f"entry {seq} appears twice (inserted)"))
            return
        while self.tree.size < seq:  # keep positions so later checks name the right entries
            self.tree.append(b"\x00" * 32)
        leaf = leaf_hash(body)
        try:
            entry = msgspec.json.decode(body, type=LedgerEntry)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            self.problems.append(Problem(seq, f"entry {seq} is not a ledger entry: {error}"))
            entry = None
        if entry is not None:
            if entry.seq != seq:
                self.problems.append(
                    Problem(seq, f"entry stored at {seq} says it is entry {entry.seq}"
                            " (reordered or inserted)")
                )  # fmt: skip
            elif canonical(entry) != body:
                self.problems.append(Problem(seq, f"entry {seq} is not in canonical form"))
            if entry.prev != self._prev and seq == expected:
                culprit = seq - 1
                self.problems.append(
                    Problem(culprit, f"entry {culprit} was altered, removed or reordered: entry"
                            f" {seq} records another hash for it")
                )  # fmt: skip
            if self.exchange is not None and entry.exchange != self.exchange:
                self.problems.append(Problem(seq, f"entry {seq} names exchange {entry.exchange}"))
        if stored_leaf is not None and stored_leaf != leaf:
            self.problems.append(
                Problem(seq, f"entry {seq} was altered: its content does not hash to its leaf")
            )
        self.tree.append(leaf)
        self._prev = leaf.hex()

    def tree_heads(
        self, heads: Iterable[tuple[int, bytes | None, str]], jwks: dict[str, Any]
    ) -> int:
        """Check each head's signature, its root against the entries, and consistency with the
        head before it. Returns how many heads were checked."""
        previous: TreeHeadClaims | None = None
        count = 0
        for size, stored_root, token in heads:
            count += 1
            try:
                claims = verify_tree_head(token, jwks)
            except ReceiptInvalid as error:
                self.problems.append(Problem(None, f"tree head {size}: {error}"))
                continue
            root = bytes.fromhex(claims.root_hash)
            if claims.tree_size != size or (stored_root is not None and stored_root != root):
                self.problems.append(
                    Problem(None, f"tree head {size}: the stored row differs from what was signed")
                )
            if self.exchange is not None and claims.exchange != self.exchange:
                self.problems.append(Problem(None, f"tree head {size}: another exchange"))
            if claims.tree_size > self.tree.size:
                self.problems.append(
                    Problem(self.tree.size, f"tree head {size} covers {claims.tree_size} entries;"
                            f" the ledger has {self.tree.size} (entries removed)")
                )  # fmt: skip
                continue
            if self.tree.root(claims.tree_size) != root:
                low = 0 if previous is None else previous.tree_size
                self.problems.append(
                    Problem(low, f"tree head {size}: the root does not match entries"
                            f" {low}..{claims.tree_size - 1} (one of them changed)")
                )  # fmt: skip
            if previous is not None:
                proof = self.tree.consistency_proof(previous.tree_size, claims.tree_size)
                if not verify_consistency(
                    previous.tree_size,
                    claims.tree_size,
                    bytes.fromhex(previous.root_hash),
                    root,
                    proof,
                ):
                    self.problems.append(
                        Problem(None, f"tree heads {previous.tree_size} and {size} are not"
                                " consistent: the log was rewritten between them")
                    )  # fmt: skip
            previous = claims
        return count

    @property
    def entries(self) -> int:
        return self._entries
