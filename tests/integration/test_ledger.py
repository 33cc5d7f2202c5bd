"""The registration ledger: receipts anyone can check with the JWKS, and `dataex ledger verify`
naming the entry that was altered, removed, reordered or inserted (canonical entries:
tests/unit/test_ledger.py)."""

from __future__ import annotations

import io
import json

import pytest

from exchange.runtime import ensure_signing_key
from settlement import ledger
from settlement.cli import export, verify_database, verify_export
from settlement.merkle import verify_consistency
from tests.kit.api import bearer, issue_token
from tests.kit.processes import run_dataex, server_env
from tests.kit.settlement import publish_executed, seed_parties, seed_trades, worker


async def settled_trades(settings, pool, clock, n=12):
    """n executed trades reserved by the worker, the first half of them then settled, and a
    signed tree head over it all: 1.5 n entries."""
    await ensure_signing_key(pool, settings)
    async with pool.acquire() as conn:
        seller, buyers, product = await seed_parties(conn, 2)
        events = await seed_trades(conn, n, seller, buyers, product)
    await publish_executed(settings, events)
    async with worker(settings, pool, clock) as w:
        await w.drain()
        rows = await pool.fetch(
            "SELECT * FROM settlement_trades WHERE state = 'reserved' ORDER BY trade_id"
        )
        async with pool.acquire() as conn, conn.transaction():
            locked = await conn.fetch(
                "SELECT * FROM settlement_trades WHERE trade_id = ANY($1::uuid[]) FOR UPDATE",
                [r["trade_id"] for r in rows[: n // 2]],
            )
            await w.service._finish(conn, locked, "settled", clock.now(), None)
        await w.service.sign_tree_head()
    return events, buyers


async def test_a_receipt_verifies_with_only_the_jwks_and_fails_after_any_byte_changes(
    client, settings, pool, clock, admin_token, tmp_path
):
    events, _buyers = await settled_trades(settings, pool, clock)
    # A buyer token for the first trade's buyer: issued through the admin API.
    buyer_org = events[0].buyer.org_id
    token = await issue_token(client, admin_token, buyer_org, ["buyer"])
    trade_id = next(e.trade_id for e in events if e.buyer.org_id == buyer_org)
    response = await client.get(f"/v1/trades/{trade_id}/receipt", headers=bearer(token))
    assert response.status_code == 200, response.text
    data = response.content
    jwks = (await client.get("/.well-known/jwks.json")).json()
    receipt = ledger.verify_receipt(data, jwks)
    assert receipt.trade_id == trade_id and receipt.entries[0].entry.step == "reserved"

    for position in range(len(data)):
        altered = bytearray(data)
        altered[position] = ord("b") if data[position] != ord("b") else ord("c")
        with pytest.raises(ledger.ReceiptInvalid):
            ledger.verify_receipt(bytes(altered), jwks)

    (tmp_path / "receipt.json").write_bytes(data)
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    ok = run_dataex("ledger", "verify-receipt", str(tmp_path / "receipt.json"),
                    "--jwks", str(tmp_path / "jwks.json"))  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"receipt verified: trade {trade_id}" in ok.stdout
    (tmp_path / "receipt.json").write_bytes(data.replace(b'"reserved"', b'"settled"'))
    bad = run_dataex("ledger", "verify-receipt", str(tmp_path / "receipt.json"),
                     "--jwks", str(tmp_path / "jwks.json"))  # fmt: skip
    assert bad.returncode == 1 and "NOT verified" in bad.stdout


async def test_tree_heads_are_public_signed_and_consistent(client, settings, pool, clock):
    await settled_trades(settings, pool, clock, n=6)
    first = (await client.get("/v1/ledger/tree-heads/latest")).json()
    await settled_trades(settings, pool, clock, n=4)
    second = (await client.get("/v1/ledger/tree-heads/latest")).json()
    assert second["tree_size"] > first["tree_size"]
    jwks = (await client.get("/.well-known/jwks.json")).json()
    for head in (first, second):
        claims = ledger.verify_tree_head(head["jws"], jwks)
        assert claims.tree_size == head["tree_size"] and claims.root_hash == head["root_hash"]
    listed = (await client.get("/v1/ledger/tree-heads")).json()["items"]
    assert [h["tree_size"] for h in listed] == [first["tree_size"], second["tree_size"]]
    proof = await client.get(
        "/v1/ledger/consistency",
        params={"first": first["tree_size"], "second": second["tree_size"]},
    )
    assert proof.status_code == 200
    assert verify_consistency(
        first["tree_size"], second["tree_size"], bytes.fromhex(first["root_hash"]),
        bytes.fromhex(second["root_hash"]), [bytes.fromhex(p) for p in proof.json()["proof"]],
    )  # fmt: skip
    missing = await client.get("/v1/ledger/consistency", params={"first": 1, "second": 2})
    assert missing.status_code == 404


TAMPERING = {
    # what a superuser does to one row, bypassing the append-only trigger -> the entry named
    "altered": ("UPDATE ledger_entries SET entry = convert_to(replace(convert_from(entry,"
                " 'UTF8'), '\"price_fen\":10000', '\"price_fen\":1'), 'UTF8') WHERE seq = 5", 5),
    "altered with its leaf hash": (
        "UPDATE ledger_entries SET entry = convert_to(replace(convert_from(entry, 'UTF8'),"
        " '\"price_fen\":10000', '\"price_fen\":1'), 'UTF8'), leaf_hash = sha256('\\x00'::bytea"
        " || convert_to(replace(convert_from(entry, 'UTF8'), '\"price_fen\":10000',"
        " '\"price_fen\":1'), 'UTF8')) WHERE seq = 5", 5),
    "removed": ("DELETE FROM ledger_entries WHERE seq = 5", 5),
    "reordered": ("UPDATE ledger_entries l SET entry = o.entry, leaf_hash = o.leaf_hash"
                  " FROM ledger_entries o WHERE (l.seq, o.seq) IN ((5, 6), (6, 5))", 5),
    "inserted": ("INSERT INTO ledger_entries SELECT 18, trade_id, step, entry, leaf_hash,"
                 " created_at FROM ledger_entries WHERE seq = 17", 18),
}  # fmt: skip


@pytest.mark.parametrize("how", list(TAMPERING))
async def test_verify_names_the_entry_that_was_tampered_with(
    settings, pool, clock, admin_token, how, tmp_path
):
    await settled_trades(settings, pool, clock)
    report = io.StringIO()
    assert await verify_database(settings.database_url, report) == 0, report.getvalue()
    assert "ledger verified: 18 entries" in report.getvalue()
    await export(settings.database_url, tmp_path / "ledger.jsonl", io.StringIO())
    statement, seq = TAMPERING[how]
    async with pool.acquire() as conn:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(statement)
        await conn.execute("SET session_replication_role = origin")
    result = run_dataex("ledger", "verify", env=server_env(settings, settings.state_dir))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"entry {seq}:" in result.stdout, result.stdout
    # The export taken before the change still verifies on its own.
    assert verify_export(tmp_path / "ledger.jsonl", io.StringIO()) == 0


async def test_an_export_verifies_offline_and_a_changed_line_is_named(
    settings, pool, clock, tmp_path
):
    await settled_trades(settings, pool, clock)
    path = tmp_path / "ledger.jsonl"
    await export(settings.database_url, path, io.StringIO())
    ok = run_dataex("ledger", "verify", "--export", str(path))
    assert ok.returncode == 0 and "ledger verified: 18 entries" in ok.stdout, ok.stdout
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1 + 7] = (
        lines[1 + 7]
        .replace(b'"step":"reserved"', b'"step":"settled"')
        .replace(b'"step":"settled"', b'"step":"voided"')
    )
    path.write_bytes(b"".join(lines))
    report = io.StringIO()
    assert verify_export(path, report) == 1
    assert "entry 7:" in report.getvalue()
