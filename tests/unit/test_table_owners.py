"""Each table has one owning package, and only that package writes it.

A grep over the SQL in the service packages: every INSERT / UPDATE / DELETE / TRUNCATE /
ALTER TABLE / COPY naming a table, and every named row type (`exchange.platform.rows.Row`),
must sit in the table's owner. Other rooms call the owner's functions, react to its events or
are handed its entry points by the composition root (`exchange/wiring.py`). The README's
architecture section lists the same owners, and a test keeps the two in step.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

from exchange.platform.rows import Row

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("exchange", "contracts", "settlement")

TABLE_OWNERS = {
    # the floor
    "audit_log": "exchange.platform",
    "outbox": "exchange.platform",
    "signing_keys": "exchange.platform",
    "process_heartbeats": "exchange.platform",
    # organisations and tokens
    "organisations": "exchange.identity",
    "api_tokens": "exchange.identity",
    # the policy engine
    "policy_lists": "contracts.policy",
    "policy_decisions": "contracts.policy",
    "policy_subjects": "contracts.policy",
    # products and listings
    "products": "exchange.listings",
    "product_revisions": "exchange.listings",
    "product_code_sequences": "exchange.listings",
    "listing_objections": "exchange.listings",
    # the review queue
    "review_cases": "exchange.review",
    "review_decisions": "exchange.review",
    # the staff console's sessions
    "console_sessions": "exchange.console",
    # the catalog projection
    "catalog_entries": "exchange.catalog",
    "catalog_counts": "exchange.catalog",
    "catalog_token_counts": "exchange.catalog",
    "catalog_publications": "exchange.catalog",
    # recognition across exchanges
    "peers": "exchange.recognition",
    "member_credentials": "exchange.recognition",
    "accepted_credentials": "exchange.recognition",
    "recognitions": "exchange.recognition",
    "listing_feed": "exchange.recognition",
    # signatures' keys
    "org_keys": "contracts.agreements",
    # orders and contracts
    "idempotency_keys": "contracts.orders",
    "standing_offers": "contracts.orders",
    "orders": "contracts.orders",
    "trade_contracts": "contracts.orders",
    "contract_signatures": "contracts.orders",
    "fee_schedules": "contracts.orders",
    # settlement and the ledger
    "accounts": "settlement",
    "movements": "settlement",
    "postings": "settlement",
    "settlement_trades": "settlement",
    "trade_cancellations": "settlement",
    "ledger_entries": "settlement",
    "ledger_tree_heads": "settlement",
    "settlement_failures": "settlement",
    "usage_statements": "settlement",
    "settlement_reconciler": "settlement",
    "settlement_overdue": "settlement",
    # delivery: grants, quotas, usage, files
    "grants": "exchange.delivery",
    "grant_quotas": "exchange.delivery",
    "quota_leases": "exchange.delivery",
    "usage_records": "exchange.delivery",
    "usage_periods": "exchange.delivery",
    "delivery_tokens": "exchange.delivery",
    "delivery_trade_news": "exchange.delivery",
    "delivery_upstreams": "exchange.delivery",
    "delivery_blobs": "exchange.delivery",
    "delivery_files": "exchange.delivery",
    "delivery_uploads": "exchange.delivery",
    # compute-to-data: algorithms, jobs, privacy budgets
    "compute_algorithms": "exchange.compute",
    "compute_jobs": "exchange.compute",
    "compute_budgets": "exchange.compute",
    # disputes: claims over trades, their evidence, approvals and signatures
    "disputes": "exchange.disputes",
    "dispute_transitions": "exchange.disputes",
    "dispute_evidence": "exchange.disputes",
    "dispute_approvals": "exchange.disputes",
    "dispute_signatures": "exchange.disputes",
}

_WRITE = re.compile(
    r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|TRUNCATE(?:\s+TABLE)?|ALTER\s+TABLE|COPY)"
    r"\s+(?:ONLY\s+)?([a-z_][a-z0-9_]*)"
    r"|copy_(?:records_)?to_table\(\s*[\"']([a-z_][a-z0-9_]*)[\"']",
    re.IGNORECASE,
)
_CREATE = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?([a-z_][a-z0-9_]*)", re.IGNORECASE)


def owns(owner: str, module: str) -> bool:
    return module == owner or module.startswith(owner + ".")


def writes_in(source: str) -> list[tuple[str, int]]:
    """(table, line) of each write to a known table in a source text."""
    found = []
    for match in _WRITE.finditer(source):
        table = (match.group(1) or match.group(2)).lower()
        if table in TABLE_OWNERS:
            found.append((table, source.count("\n", 0, match.start()) + 1))
    return found


def trespasses(module: str, source: str) -> list[str]:
    return [
        f"{module}:{line} writes {table}, owned by {TABLE_OWNERS[table]}"
        for table, line in writes_in(source)
        if not owns(TABLE_OWNERS[table], module)
    ]


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found.append((name, path))
    return found


def test_every_table_of_the_migrations_has_one_owner():
    created = set()
    for migration in sorted((ROOT / "schemas" / "migrations").glob("*.sql")):
        created |= {m.lower() for m in _CREATE.findall(migration.read_text(encoding="utf-8"))}
    assert created == set(TABLE_OWNERS), "add the new table to TABLE_OWNERS and the README"


def test_only_the_owner_writes_a_table():
    modules = _modules()
    assert len(modules) > 50
    problems = [
        problem
        for name, path in modules
        for problem in trespasses(name, path.read_text(encoding="utf-8"))
    ]
    assert problems == []


@pytest.mark.parametrize(
    ("module", "sql", "flagged"),
    [
        ("exchange.recognition.service", "UPDATE products SET state = 'listed'", True),
        ("settlement.service", "UPDATE trade_contracts SET state = 'unfunded'", True),
        ("contracts.orders.service", "INSERT INTO review_cases (id) VALUES ($1)", True),
        ("benchmarks.seed", 'await conn.copy_records_to_table("catalog_entries", records=r)', True),
        ("exchange.listings.service", "UPDATE products SET state = $2 WHERE id = $1", False),
        ("contracts.orders.service", "SELECT * FROM review_cases FOR UPDATE OF c", False),
        ("exchange.catalog.service", "ON CONFLICT (product_id) DO UPDATE SET revision = 1", False),
    ],
)
def test_the_scanner_flags_a_write_outside_the_owner(module, sql, flagged):
    assert bool(trespasses(module, sql)) is flagged


def _row_types() -> list[type[Row]]:
    for package in PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            importlib.import_module(info.name)
    pending, seen = list(Row.__subclasses__()), []
    while pending:
        kind = pending.pop()
        seen.append(kind)
        pending += kind.__subclasses__()
    return seen


def test_named_row_types_live_with_the_table_they_write():
    kinds = _row_types()
    assert {k.__table__ for k in kinds} >= {"orders", "trade_contracts", "audit_log", "outbox"}
    misplaced = [
        f"{k.__module__}.{k.__name__} writes {k.__table__} ({TABLE_OWNERS.get(k.__table__)})"
        for k in kinds
        if k.__table__ not in TABLE_OWNERS or not owns(TABLE_OWNERS[k.__table__], k.__module__)
    ]
    assert misplaced == []


def test_the_readme_lists_the_same_owners():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = dict(re.findall(r"^\| `([a-z_]+)` \| `([a-z.]+)` \|", readme, re.MULTILINE))
    assert listed == TABLE_OWNERS
