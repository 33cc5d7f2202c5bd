"""A dispute's evidence bundle verifies offline with the JWKS, and any change names what changed.

Bundles are built here with real Ed25519 keys and a real ledger Merkle tree (settlement's, as
settlement.ledger.sign_tree_head signs it); the bundle's verifier itself never imports
settlement.
"""

from __future__ import annotations

import functools
import hashlib
import io
import tarfile
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange.disputes.bundle import (
    FIXED_MEMBERS,
    MANIFEST_JWS_TYPE,
    README,
    BundleInvalid,
    BundleItem,
    bundle_size,
    evidence_digest,
    item_path,
    prepare_bundle,
    verify_bundle,
    write_bundle,
)
from exchange.platform.canonical import canonical_json
from exchange.platform.disputes import LedgerProofs
from exchange.platform.signing import SigningKey, _kid, b64url_decode, public_jwk
from settlement import ledger
from settlement.merkle import MerkleTree, leaf_hash

EXCHANGE = "DX"
EXPORTED_AT = "2026-03-01T08:00:00.000000Z"


def new_key() -> SigningKey:
    private = Ed25519PrivateKey.generate()
    return SigningKey(_kid(private.public_key()), private)


def jwks_of(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [public_jwk(key.private.public_key(), key.kid) for key in keys]}


@dataclass
class Case:
    """A dispute with its items on disk, the ledger holding their entries, and the keys."""

    key: SigningKey
    dispute: dict[str, Any]
    items: list[BundleItem]
    bodies: list[bytes]  # the whole ledger's entries
    dispute_seqs: list[int]  # the entries of the dispute (evidence + resolution)
    tree_head: str

    @property
    def jwks(self) -> dict[str, Any]:
        return jwks_of(self.key)

    def proofs(self, tree_head: str | None = None, seqs: list[int] | None = None) -> LedgerProofs:
        tree = MerkleTree(leaf_hash(body) for body in self.bodies)
        chosen = self.dispute_seqs if seqs is None else seqs
        return LedgerProofs(
            tree_head=tree_head or self.tree_head,
            entries=tuple(
                (self.bodies[seq], tuple(p.hex() for p in tree.inclusion_proof(seq, tree.size)))
                for seq in chosen
            ),
        )

    def write(self, **changes: Any) -> bytes:
        out = io.BytesIO()
        arguments: dict[str, Any] = {
            "exchange": EXCHANGE, "dispute": self.dispute, "items": self.items,
            "proofs": self.proofs(), "exported_at": EXPORTED_AT,
            "sign": functools.partial(self.key.sign_detached, typ=MANIFEST_JWS_TYPE),
        }  # fmt: skip
        arguments.update(changes)
        write_bundle(out, **arguments)
        return out.getvalue()


def ledger_entry(
    seq: int, prev: str, trade_id: str, step: str, *, digest: str | None = None,
    dispute_id: str | None = None, at: str | None = None,
) -> bytes:  # fmt: skip
    """A ledger entry as settlement.ledger writes it (its canonical bytes); evidence and
    resolution entries carry the dispute's id."""
    party = {"org_id": str(uuid.uuid5(uuid.NAMESPACE_OID, trade_id)), "uscc": None}
    entry: dict[str, Any] = {
        "seq": seq, "prev": prev, "exchange": EXCHANGE, "trade_id": trade_id, "step": step,
        "contract_digest": "sha256:" + "ab" * 32, "product_code": "DX-1", "buyer": party,
        "seller": party, "price_fen": 9_709 if step == "reserved" else 0,
        "fee_fen": 291 if step == "reserved" else 0, "movement_id": None,
        "at": at or ledger.timestamp(datetime(2026, 2, 1, tzinfo=UTC)),
    }  # fmt: skip
    if digest is not None:
        entry["statement_digest"] = digest
    if dispute_id is not None:
        entry["dispute_id"] = dispute_id
    return ledger.canonical(entry)


def sign_tree_head(key: SigningKey, bodies: list[bytes], exchange: str = EXCHANGE) -> str:
    """What settlement.ledger.sign_tree_head signs."""
    tree = MerkleTree(leaf_hash(body) for body in bodies)
    claims = ledger.TreeHeadClaims(
        exchange=exchange, tree_size=tree.size, root_hash=tree.root().hex(),
        timestamp=ledger.timestamp(datetime(2026, 3, 1, 7, 59, tzinfo=UTC)),
    )  # fmt: skip
    return key.sign_compact(claims, typ=ledger.TREE_HEAD_TYPE)


FILES = [  # kind, name, media type, submitter, content
    ("contract", "contract.json", "application/json", "exchange", b'{"contract":"\xe5\x90\x88"}'),
    ("usage", "usage-records.jsonl", "application/x-ndjson", "exchange",
     b"".join(b'{"id":%d,"units":1}\n' % i for i in range(200))),
    ("statement", "陈述.txt", "text/plain", "buyer", "数据与描述不符。".encode() * 40),
    ("screenshot", "screen.png", "image/png", "buyer", bytes(range(256)) * 30),
    ("report", "report.pdf", "application/pdf", "seller", b"%PDF-1.7\n" + b"x" * 1500),
]  # fmt: skip


def build_case(tmp_path: Path, files: list[tuple[str, str, str, str, bytes]] = FILES) -> Case:
    key = new_key()
    dispute_id, trade_id = str(uuid.uuid4()), str(uuid.uuid4())
    dispute = {"id": dispute_id, "trade_id": trade_id, "reason": "not_as_described",
               "claimed_fen": 5_000, "state": "under_review"}  # fmt: skip
    bodies: list[bytes] = []

    def append(trade: str, step: str, **fields: Any) -> int:
        prev = leaf_hash(bodies[-1]).hex() if bodies else ledger.GENESIS_PREV
        bodies.append(ledger_entry(len(bodies), prev, trade, step, **fields))
        return len(bodies) - 1

    append(str(uuid.uuid4()), "reserved")
    append(trade_id, "reserved")
    items, seqs = [], []
    for index, (kind, name, media, submitter, content) in enumerate(files):
        append(str(uuid.uuid4()), "reserved")  # other trades' entries in between
        sha = hashlib.sha256(content).hexdigest()
        path = tmp_path / f"stored-{index}"
        path.write_bytes(content)
        submitted = f"2026-02-0{index + 2}T10:00:00.000000Z"  # the entry's time, as registered
        seq = append(trade_id, "evidence", digest=evidence_digest(sha), dispute_id=dispute_id,
                     at=submitted)  # fmt: skip
        seqs.append(seq)
        items.append(BundleItem(
            index=index, kind=kind, name=name, media_type=media, sha256=sha, size=len(content),
            submitter=submitter,
            submitter_org_id=None if submitter == "exchange" else str(uuid.uuid4()),
            submitted_at=submitted, ledger_seq=seq, path=path,
        ))  # fmt: skip
    seqs.append(append(trade_id, "resolution", digest="sha256:" + "cd" * 32, dispute_id=dispute_id))
    append(str(uuid.uuid4()), "settled")
    return Case(key, dispute, items, bodies, seqs, sign_tree_head(key, bodies))


@pytest.fixture
def case(tmp_path: Path) -> Case:
    return build_case(tmp_path)


def members(bundle: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        return tar.getmembers()


def retar(entries: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, body in entries:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def contents(bundle: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def with_member(bundle: bytes, name: str, body: bytes) -> bytes:
    return retar([(n, body if n == name else b) for n, b in contents(bundle)])


def fails(bundle: bytes, jwks: dict[str, Any], *expected: str) -> str:
    with pytest.raises(BundleInvalid) as raised:
        verify_bundle(bundle, jwks)
    message = str(raised.value)
    for part in expected:
        assert part in message, message
    return message


# --- a bundle as written ---------------------------------------------------------------------


def test_a_bundle_verifies_from_bytes_and_from_a_file(case, tmp_path):
    bundle = case.write()
    path = tmp_path / "bundle.tar"
    path.write_bytes(bundle)
    for source in (bundle, path):
        verified = verify_bundle(source, case.jwks)
        assert (verified.dispute_id, verified.trade_id, verified.exchange, verified.items) == (
            case.dispute["id"], case.dispute["trade_id"], EXCHANGE, len(FILES),
        )  # fmt: skip
        assert verified.tree_size == len(case.bodies)
        assert verified.signed_at == "2026-03-01T07:59:00.000000Z"
        assert verified.manifest["dispute"] == case.dispute


def test_the_archive_is_a_plain_tar_in_the_documented_order(case):
    bundle = case.write()
    assert len(bundle) % tarfile.RECORDSIZE == 0
    listed = members(bundle)
    assert [m.name for m in listed] == [
        *FIXED_MEMBERS, *(item_path(i.index, i.sha256) for i in case.items),
    ]  # fmt: skip
    assert all(m.isreg() and m.mode == 0o644 for m in listed)
    assert {m.mtime for m in listed} == {int(datetime(2026, 3, 1, 8, tzinfo=UTC).timestamp())}
    files = dict(contents(bundle))
    assert files["README.txt"] == README and "争议证据包".encode() in README
    for item, (*_, content) in zip(case.items, FILES, strict=True):
        assert files[item_path(item.index, item.sha256)] == content
    manifest = msgspec.json.decode(files["manifest.json"])
    assert canonical_json(manifest) == files["manifest.json"]
    assert manifest["type"] == "dataex.dispute-bundle.v1" and manifest["exported_at"] == EXPORTED_AT
    assert manifest["items"][2] == {
        "index": 2, "kind": "statement", "name": "陈述.txt", "media_type": "text/plain",
        "sha256": case.items[2].sha256, "size": case.items[2].size, "submitter": "buyer",
        "submitter_org_id": case.items[2].submitter_org_id,
        "submitted_at": "2026-02-04T10:00:00.000000Z", "ledger_seq": case.items[2].ledger_seq,
        "path": f"items/002-{case.items[2].sha256}",
    }  # fmt: skip
    jws = files["manifest.jws"].decode()
    assert jws.split(".")[1] == ""  # detached
    document = msgspec.json.decode(files["ledger.json"])
    assert canonical_json(document) == files["ledger.json"]
    assert [ledger.canonical(e["entry"]) for e in document["entries"]] == [
        case.bodies[seq] for seq in case.dispute_seqs
    ]
    assert document["tree_head"] == case.tree_head


def test_writing_is_the_same_bytes_every_time(case):
    assert case.write() == case.write()


@pytest.mark.parametrize(
    "sizes", [(), (0,), (1, 511, 512, 513), (10_240,), (10_239, 1), (3 * 10_240 + 7, 4_000)]
)
def test_the_archive_size_is_known_before_writing(tmp_path, sizes):
    """`bundle_size` (an export's Content-Length) is the length of what `write_bundle` writes,
    whatever the items' sizes against the tar's blocks (512) and records (10240)."""
    files = [("other", f"f{n}.bin", "application/octet-stream", "buyer", bytes([n % 251]) * size)
             for n, size in enumerate(sizes)]  # fmt: skip
    case = build_case(tmp_path, files)
    arguments: dict[str, Any] = {
        "exchange": EXCHANGE, "dispute": case.dispute, "items": case.items,
        "proofs": case.proofs(), "exported_at": EXPORTED_AT,
        "sign": functools.partial(case.key.sign_detached, typ=MANIFEST_JWS_TYPE),
    }  # fmt: skip
    assert bundle_size(**arguments) == len(case.write()) == prepare_bundle(**arguments).size


def test_a_bundle_with_no_items_verifies(tmp_path):
    case = build_case(tmp_path, [])
    assert verify_bundle(case.write(), case.jwks).items == 0


# --- any byte of any file --------------------------------------------------------------------


def flipped(bundle: bytes, member: tarfile.TarInfo, at: int) -> bytes:
    changed = bytearray(bundle)
    changed[member.offset_data + at] ^= 0x01
    return bytes(changed)


def expected_name(case: Case, name: str) -> str:
    if name in ("manifest.json", "manifest.jws"):
        return "the manifest"
    if name in ("README.txt", "ledger.json"):
        return name
    item = next(i for i in case.items if item_path(i.index, i.sha256) == name)
    return f"item {item.index} ({item.name})"


def test_changing_one_byte_of_any_file_fails_naming_it(case):
    bundle = case.write()
    for member in members(bundle):
        what = expected_name(case, member.name)
        positions = {0, member.size // 2, member.size - 1}
        if member.name in ("manifest.json", "ledger.json"):
            positions |= set(range(0, member.size, 11))  # the signed documents: all over
        for at in sorted(positions):
            message = fails(flipped(bundle, member, at), case.jwks, what)
            if member.name.startswith("items/"):
                assert message == f"{what}: sha256 differs from the manifest"


def test_a_damaged_header_or_hidden_data_after_the_end_fails(case):
    bundle = case.write()
    last = members(bundle)[-1]
    changed = bytearray(bundle)
    changed[last.offset + 10] ^= 0x01  # the last item's header (its name)
    fails(bytes(changed), case.jwks)
    hidden = bundle + retar([("hidden.txt", b"not in the manifest")])
    fails(hidden, case.jwks, "data after its last member")
    fails(b"not a tar at all" * 100, case.jwks, "not a well-formed tar archive")
    fails(bundle[: len(bundle) // 2], case.jwks)


# --- items removed, reordered, added ---------------------------------------------------------


def test_a_removed_item_is_missing(case):
    files = contents(case.write())
    fails(retar(files[:6] + files[7:]), case.jwks, "item 2 (陈述.txt) is missing")
    fails(retar(files[:-1]), case.jwks, "item 4 (report.pdf) is missing")


def test_two_reordered_items_are_out_of_place(case):
    files = contents(case.write())
    files[5], files[7] = files[7], files[5]
    fails(retar(files), case.jwks, "item 1 (usage-records.jsonl) is out of place")


def test_an_extra_member_fails(case):
    files = contents(case.write())
    fails(retar([*files, ("items/005-extra", b"more")]), case.jwks,
          "a member not in the manifest: items/005-extra")  # fmt: skip
    fails(retar([*files[:4], ("note.txt", b"x"), *files[4:]]), case.jwks,
          "item 0 (contract.json) is out of place")  # fmt: skip
    twice = retar([*files[:5], *files[4:]])  # item 0 twice
    fails(twice, case.jwks, "item 1 (usage-records.jsonl) is out of place")


def test_fixed_members_missing_or_moved_are_named(case):
    files = contents(case.write())
    fails(retar(files[1:]), case.jwks, "README.txt is missing")
    fails(retar([files[0], files[2], files[1], *files[3:]]), case.jwks,
          "manifest.json is out of place")  # fmt: skip
    fails(retar([f for f in files if f[0] != "ledger.json"]), case.jwks, "ledger.json is missing")


# --- the manifest and its signature ----------------------------------------------------------


def test_a_manifest_changed_and_kept_canonical_fails_its_signature(case):
    bundle = case.write()
    manifest = msgspec.json.decode(dict(contents(bundle))["manifest.json"])
    manifest["items"][1]["submitter"] = "seller"
    changed = with_member(bundle, "manifest.json", canonical_json(manifest))
    fails(changed, case.jwks, "the manifest's signature: signature does not verify")
    spaced = with_member(bundle, "manifest.json", msgspec.json.encode(manifest) + b" ")
    fails(spaced, case.jwks, "the manifest is not in its canonical (RFC 8785) form")


def test_a_manifest_signed_by_another_key_fails(case):
    other = new_key()
    signed = case.write(sign=functools.partial(other.sign_detached, typ=MANIFEST_JWS_TYPE))
    fails(signed, case.jwks, f"the manifest's signature: unknown key '{other.kid}'")
    impostor = SigningKey(case.key.kid, other.private)  # the exchange's kid, another key
    signed = case.write(sign=functools.partial(impostor.sign_detached, typ=MANIFEST_JWS_TYPE))
    fails(signed, case.jwks, "the manifest's signature: signature does not verify")


def test_a_signature_of_another_type_fails(case):
    bundle = case.write()
    manifest = dict(contents(bundle))["manifest.json"]
    other = case.key.sign_detached(manifest, typ="dataex-other+jws")
    fails(with_member(bundle, "manifest.jws", other.encode()), case.jwks,
          "the manifest's signature is not of typ dataex-dispute-bundle+jws")  # fmt: skip
    with pytest.raises(ValueError, match="detached JWS of typ"):
        case.write(sign=functools.partial(case.key.sign_detached, typ="dataex-other+jws"))


# --- ledger.json -----------------------------------------------------------------------------


def ledger_document(bundle: bytes) -> dict[str, Any]:
    document: dict[str, Any] = msgspec.json.decode(dict(contents(bundle))["ledger.json"])
    return document


def test_an_entry_whose_digest_changed_fails_naming_the_item(case):
    bundle = case.write()
    document = ledger_document(bundle)
    document["entries"][3]["entry"]["statement_digest"] = "sha256:" + "00" * 32
    changed = with_member(bundle, "ledger.json", canonical_json(document))
    fails(changed, case.jwks, f"item 3 (screen.png): ledger entry {case.items[3].ledger_seq}"
          " in ledger.json is not included in the signed tree")  # fmt: skip


def test_a_proof_changed_fails_naming_the_item(case):
    bundle = case.write()
    document = ledger_document(bundle)
    proof = document["entries"][1]["inclusion_proof"]
    proof[0] = proof[0][::-1]
    changed = with_member(bundle, "ledger.json", canonical_json(document))
    fails(changed, case.jwks, "item 1 (usage-records.jsonl): ledger entry", "not included")


def test_a_tree_head_from_another_key_or_exchange_fails(case):
    other = new_key()
    forged = case.write(proofs=case.proofs(tree_head=sign_tree_head(other, case.bodies)))
    fails(forged, case.jwks, f"the tree head in ledger.json: unknown key '{other.kid}'")
    elsewhere = case.write(proofs=case.proofs(sign_tree_head(case.key, case.bodies, "DY")))
    fails(elsewhere, case.jwks, "the tree head in ledger.json is another exchange's")
    wrong_type = case.key.sign_compact(
        msgspec.json.decode(b64url_decode(case.tree_head.split(".")[1])), typ="other+jws"
    )
    fails(case.write(proofs=case.proofs(wrong_type)), case.jwks,
          "the tree head in ledger.json is not of typ dataex-tree-head+jws")  # fmt: skip


def test_a_tree_head_of_another_tree_fails_the_first_item(case):
    shorter = sign_tree_head(case.key, case.bodies[:-1])  # signed, but not what the proofs say
    fails(case.write(proofs=case.proofs(shorter)), case.jwks,
          "item 0 (contract.json): ledger entry", "not included in the signed tree of size")  # fmt: skip


def test_an_entry_missing_or_of_another_dispute_fails(case):
    without = case.write(proofs=case.proofs(seqs=case.dispute_seqs[1:]))
    fails(without, case.jwks,
          f"item 0 (contract.json): ledger entry {case.items[0].ledger_seq} is not in ledger.json")  # fmt: skip
    seq = case.items[2].ledger_seq
    bodies = list(case.bodies)
    entry = msgspec.json.decode(bodies[seq])
    entry["dispute_id"] = str(uuid.uuid4())
    bodies[seq] = ledger.canonical(entry)
    other = replace(case, bodies=bodies, tree_head=sign_tree_head(case.key, bodies))
    fails(other.write(), case.jwks, f"item 2 (陈述.txt): ledger entry {seq} in ledger.json is"
          " another dispute's")  # fmt: skip


def test_an_entry_registering_another_digest_or_step_fails(case):
    seq = case.items[4].ledger_seq
    bodies = list(case.bodies)
    entry = msgspec.json.decode(bodies[seq])
    entry["step"] = "resolution"
    bodies[seq] = ledger.canonical(entry)
    other = replace(case, bodies=bodies, tree_head=sign_tree_head(case.key, bodies))
    fails(other.write(), case.jwks, f"item 4 (report.pdf): ledger entry {seq} in ledger.json"
          " does not register it")  # fmt: skip


def test_evidence_left_out_of_the_manifest_fails(case):
    left_out = case.write(items=case.items[:-1])
    fails(left_out, case.jwks, f"ledger entry {case.items[-1].ledger_seq} in ledger.json"
          " registers evidence that is not in the manifest")  # fmt: skip


def test_a_resolution_entry_of_another_trade_fails(case):
    seq = case.dispute_seqs[-1]
    bodies = list(case.bodies)
    entry = msgspec.json.decode(bodies[seq])
    entry["trade_id"] = str(uuid.uuid4())
    bodies[seq] = ledger.canonical(entry)
    other = replace(case, bodies=bodies, tree_head=sign_tree_head(case.key, bodies))
    fails(other.write(), case.jwks, f"the dispute's resolution entry: ledger entry {seq} in"
          " ledger.json is another exchange's or trade's")  # fmt: skip


# --- writing refuses stored files that changed -----------------------------------------------


def test_writing_refuses_a_stored_file_that_changed(case):
    item = case.items[1]
    content = item.path.read_bytes()
    item.path.write_bytes(content[:-1] + b"!")
    with pytest.raises(BundleInvalid, match=r"item 1 \(usage-records.jsonl\): the stored file"
                       " no longer has its sha256"):  # fmt: skip
        case.write()
    item.path.write_bytes(content[:-1])
    with pytest.raises(BundleInvalid, match=r"item 1 \(usage-records.jsonl\): the stored"
                       " file's size"):  # fmt: skip
        case.write()
    item.path.unlink()
    with pytest.raises(BundleInvalid, match=r"item 1 \(usage-records.jsonl\): the stored"
                       " file cannot be read"):  # fmt: skip
        case.write()
