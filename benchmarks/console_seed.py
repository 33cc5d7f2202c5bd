"""Open review cases for ``dataex bench console``, in the shapes the real flows leave them.

Most cases are listings, written with COPY in one transaction: products of synthetic sellers
(names and manuals from `benchmarks.seed.product`), each with a classification that the policy
lists treat in one of a dozen ways (de-identified or identified personal information, important
data under four eyes, authorised public data, purchased or regulated-sector data, a few of them
combined, none at all). Every product's evaluation document goes through the real evaluator
under the list in effect (memoised by the document: a few dozen distinct ones), so its policy
decision row and its case's hits are exactly what ``submit`` would have stored, cautious hits
with their bilingual titles, explanations, remedies and required evidence.

- First listings (70 %): a product ``in_review`` with revision 1 pending.
- Material revisions (30 %): a listed product (product code, a listing certificate signed with
  the exchange's key, revision 1 live, its approved case closed) with revision 2 pending: a
  bigger scale, another update frequency and price, one more field, a new summary and the
  classification that brings the hits, so the case page shows a field-by-field diff.
- Half the four-eyes cases carry one approval already (by a second reviewer, with evidence for
  every cautious hit, its claim and decision in the audit trail), released for the second.
- 3 % are claimed by the benchmark's own reviewer (the queue's ``mine`` filter), 3 % by the
  second reviewer.
- Opened at instants spread evenly over the last 30 days.

The other kinds are opened through the running API, as their flows open them: orders exporting
150,000 individuals' de-identified information to Singapore (CAU-05 under the cross-border
rules: ``in_review``), staff proposals of a product's legal prohibition and of sellers' exporter
status (four-eyes cases). Their ``opened_at`` is then spread over the 30 days like the rest.

Listed products get no catalogue rows (the console never reads the catalogue): this is a
benchmark's data set, for a scratch database or a test exchange, never one whose data matters.
"""

from __future__ import annotations

import copy
import hashlib
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import asyncpg
import msgspec

from benchmarks.seed import _copy_buffer
from benchmarks.seed import product as synthetic_product
from contracts.policy.evaluator import evaluate
from contracts.policy.rules import PolicyList
from contracts.policy.schemas import Decision
from contracts.policy.service import PolicyService
from exchange.identity.uscc import synthetic_uscc
from exchange.listings.lifecycle import evaluation_document, metadata_problems, product_code
from exchange.listings.schemas import ProductMetadata, RevisionInfo
from exchange.listings.service import CERTIFICATE_TYPE, certificate_claims
from exchange.platform.canonical import sha256_digest
from exchange.platform.clock import SystemClock
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing, load_master_key

DAYS = 30
MATERIAL_SHARE = 0.30
ONE_APPROVAL_SHARE = 0.5  # of the four-eyes cases
MINE_SHARE = 0.03
OTHERS_SHARE = 0.03
ORDER_PI_SUBJECTS = 150_000  # > 100,000 individuals a year: a standard contract (CAU-05)

_PI_NONE = {"present": False, "state": "anonymised", "sensitive": False, "minors_under_14": False,
            "subject_count": 0, "separate_consent_for_supply": False,
            "guardian_consent": False}  # fmt: skip
_DEIDENTIFIED = _PI_NONE | {"present": True, "state": "deidentified", "subject_count": 120_000,
                            "separate_consent_for_supply": True}  # fmt: skip
_IDENTIFIED = _PI_NONE | {"present": True, "state": "identified", "subject_count": 8_000,
                          "separate_consent_for_supply": True}  # fmt: skip
_SENSITIVE = _IDENTIFIED | {"sensitive": True, "subject_count": 3_000}
_IMPORTANT = {"classification.data_level": "important", "classification.general_grade": None}
_PURCHASED = {"source.kind": "purchased",
              "source.upstream_licence": "上游供应商授权转售协议(2025)第 4 条"}  # fmt: skip

# (name, weight, patch): a patch sets dotted paths of the product document.
VARIANTS: list[tuple[str, int, dict[str, Any]]] = [
    ("no hits", 15, {}),
    ("de-identified PI", 20, {"classification.personal_info": _DEIDENTIFIED}),
    ("identified PI", 8, {"classification.personal_info": _IDENTIFIED}),
    ("sensitive PI", 4, {"classification.personal_info": _SENSITIVE}),
    ("important data (four eyes)", 12, _IMPORTANT),
    ("authorised public data", 8,
     {"classification.public_data": {"involved": True, "channel": "authorised_operation"}}),
    ("purchased source", 10, _PURCHASED),
    ("regulated sector", 10, {"classification.regulated_domains": ["finance"]}),
    ("important + de-identified", 7, _IMPORTANT | {"classification.personal_info": _DEIDENTIFIED}),
    ("purchased + regulated", 6, _PURCHASED | {"classification.regulated_domains": ["health"]}),
]  # fmt: skip


def _patched(document: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    document = copy.deepcopy(document)
    document["classification"]["data_level"] = "general"  # seed.product makes 10 % important
    document["classification"].setdefault("general_grade", 2)
    for path, value in patch.items():
        *parents, leaf = path.split(".")
        node = document
        for name in parents:
            node = node[name]
        node[leaf] = copy.deepcopy(value)
    return document


def _revised(document: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A material revision of a listed product's document (before its variant's patch)."""
    new = copy.deepcopy(document)
    manual = new["manual"]
    manual["scale"]["rows"] = manual["scale"]["rows"] * 2 + 1_000
    manual["update_frequency"] = rng.choice(
        [f for f in ("daily", "weekly", "monthly", "realtime") if f != manual["update_frequency"]]
    )
    manual["fields"].append({"name": "region_code", "type": "string", "meaning": "行政区划代码"})
    plan = new["plans"][0]
    if not plan["free"]:
        plan["price_fen"] += 10_000
    new["summary"] += "新增行政区划代码字段,扩大覆盖范围。"
    return new


@dataclass(frozen=True)
class Evaluated:
    document: str  # the evaluation document, JSON
    decision: Decision
    decision_json: str
    hits_json: str
    rules: list[str]


class Evaluator:
    """The real evaluator under the list in effect, memoised by the evaluation document."""

    def __init__(self, policy: PolicyList) -> None:
        self.policy = policy
        self.memo: dict[bytes, Evaluated] = {}

    def __call__(self, metadata: ProductMetadata) -> Evaluated:
        document = evaluation_document(metadata, legal_prohibition=False)
        key = msgspec.json.encode(document)
        found = self.memo.get(key)
        if found is None:
            decision = evaluate(document, self.policy)
            found = self.memo[key] = Evaluated(
                key.decode(), decision, msgspec.json.encode(decision).decode(),
                msgspec.json.encode(decision.hits).decode(), [h.rule for h in decision.hits],
            )  # fmt: skip
        return found


@dataclass(frozen=True)
class Reviewer:
    token: str
    token_id: uuid.UUID
    org_id: uuid.UUID


@dataclass
class Rows:
    """COPY rows per table."""

    organisations: list[tuple[Any, ...]] = field(default_factory=list)
    products: list[tuple[Any, ...]] = field(default_factory=list)
    revisions: list[tuple[Any, ...]] = field(default_factory=list)
    decisions: list[tuple[Any, ...]] = field(default_factory=list)
    subjects: list[tuple[Any, ...]] = field(default_factory=list)
    cases: list[tuple[Any, ...]] = field(default_factory=list)
    reviews: list[tuple[Any, ...]] = field(default_factory=list)
    audit: list[tuple[Any, ...]] = field(default_factory=list)


COLUMNS = {
    "organisations": ["id", "name", "uscc", "roles", "region", "contact", "is_operator",
                      "created_at", "updated_at"],
    "products": ["id", "seller_org_id", "state", "draft", "live_revision", "pending_revision",
                 "product_code", "certificate", "created_at", "updated_at"],
    "product_revisions": ["product_id", "number", "metadata", "digest", "change", "created_at"],
    "policy_decisions": ["id", "subject_type", "subject_id", "list_version", "list_digest",
                         "outcome", "document", "decision", "decided_at"],
    "policy_subjects": ["subject_type", "subject_id", "open", "latest_decision"],
    "review_cases": ["id", "kind", "subject_id", "subject_org_id", "revision", "state", "hits",
                     "rules", "four_eyes", "policy_decision_id", "claimed_by", "claimed_at",
                     "opened_at", "closed_at"],
    "review_decisions": ["case_id", "reviewer", "reviewer_org", "verdict", "reason", "evidence",
                         "decided_at"],
    "audit_log": ["at", "actor", "actor_org_id", "actor_token_id", "action", "subject_type",
                  "subject_id", "request_id", "detail"],
}  # fmt: skip
_TABLES = {"organisations": "organisations", "products": "products",
           "revisions": "product_revisions", "decisions": "policy_decisions",
           "subjects": "policy_subjects", "cases": "review_cases", "reviews": "review_decisions",
           "audit": "audit_log"}  # fmt: skip
EVIDENCE_SHA = hashlib.sha256(b"bench console evidence").hexdigest()


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


class Builder:
    """Generates the listing cases' rows; `write` COPYs them in one transaction."""

    def __init__(
        self, settings: Settings, evaluator: Evaluator, me: Reviewer, other: Reviewer,
        key: Any, rng: random.Random, now: datetime,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.evaluator = evaluator
        self.me, self.other = me, other
        self.key = key
        self.rng = rng
        self.now = now
        self.rows = Rows()
        self.sellers: list[tuple[uuid.UUID, str, str]] = []
        self.next_decision_id = 0
        self.listed_at: dict[uuid.UUID, datetime] = {}
        self.shapes: Counter[str] = Counter()
        self.weights = [w for _, w, _ in VARIANTS]

    # --- parts --------------------------------------------------------------------------

    def sellers_of(self, count: int) -> None:
        contact = _json({"name": "数据服务部", "email": "data@example.cn",
                         "phone": "+86 571 0000 0000"})  # fmt: skip
        for n in range(count):
            org = (uuid.uuid4(), f"审核压测数据科技{n}有限公司",
                   synthetic_uscc(uuid.uuid4().int, "91330100"))  # fmt: skip
            self.sellers.append(org)
            self.rows.organisations.append(
                (org[0], org[1], org[2], ["seller"], "330100", contact, False,
                 self.now - timedelta(days=400), self.now - timedelta(days=400))
            )  # fmt: skip

    def _document(self) -> dict[str, Any]:
        while True:
            document = synthetic_product(self.rng)
            document["registration_code"] = "bench-console"
            if not metadata_problems(msgspec.convert(document, ProductMetadata)):
                return document

    def _revision(
        self, product_id: uuid.UUID, number: int, document: dict[str, Any], change: str,
        at: datetime,
    ) -> tuple[ProductMetadata, str]:  # fmt: skip
        """Stored as `ListingService._add_revision` stores it: the metadata's builtins, and
        the SHA-256 of their canonical JSON."""
        metadata = msgspec.convert(document, ProductMetadata)
        assert not metadata_problems(metadata), metadata_problems(metadata)
        digest = sha256_digest(metadata)
        self.rows.revisions.append(
            (product_id, number, _json(msgspec.to_builtins(metadata)), digest, change, at)
        )
        return metadata, digest

    def _decision(self, product_id: uuid.UUID, evaluated: Evaluated, at: datetime) -> int:
        self.next_decision_id += 1
        d = evaluated.decision
        self.rows.decisions.append((
            self.next_decision_id, "listing", str(product_id), d.list_version, d.list_digest,
            d.decision, evaluated.document, evaluated.decision_json, at,
        ))  # fmt: skip
        return self.next_decision_id

    def _audit(
        self, at: datetime, who: Reviewer | uuid.UUID, action: str, subject_type: str,
        subject_id: uuid.UUID, detail: dict[str, Any],
    ) -> None:  # fmt: skip
        if isinstance(who, Reviewer):
            token, org = who.token_id, who.org_id
        else:  # a seller's token (not stored: the seller's own requests are not measured)
            token, org = uuid.uuid4(), who
        self.rows.audit.append((at, f"token:{token}", org, token, action, subject_type,
                                str(subject_id), uuid.uuid4().hex, _json(detail)))  # fmt: skip

    def listing(self) -> None:
        """One open listing case: a first listing, or a listed product's material revision."""
        rng = self.rng
        name, _weight, patch = rng.choices(VARIANTS, self.weights)[0]
        seller_id = self.sellers[rng.randrange(len(self.sellers))][0]
        product_id = uuid.uuid4()
        opened = self.now - timedelta(seconds=rng.uniform(60, DAYS * 86400))
        material = rng.random() < MATERIAL_SHARE
        if material:
            proposed = self._listed(product_id, seller_id, patch, opened)
            number, action = 2, "product.revised"
        else:
            created = opened - timedelta(days=rng.uniform(0, 5))
            document = _patched(self._document(), patch)
            proposed, _ = self._revision(product_id, 1, document, "initial", opened)
            self.rows.products.append((product_id, seller_id, "in_review", _json(document), None,
                                       1, None, None, created, opened))  # fmt: skip
            number, action = 1, "product.submitted"
        evaluated = self.evaluator(proposed)
        if evaluated.decision.decision not in ("allow", "review"):
            raise RuntimeError(f"variant {name!r} is refused by the list: fix its patch")
        decision_id = self._decision(product_id, evaluated, opened)
        self.rows.subjects.append(("listing", str(product_id), True, decision_id))
        case_id = uuid.uuid4()
        self._audit(opened, seller_id, action, "product", product_id,
                    {"revision": number, "case_id": str(case_id), "rules": evaluated.rules,
                     "four_eyes": evaluated.decision.four_eyes})  # fmt: skip
        claimed: tuple[uuid.UUID, datetime] | None = None
        if evaluated.decision.four_eyes and rng.random() < ONE_APPROVAL_SHARE:
            self._approval(case_id, evaluated, opened + (self.now - opened) * rng.uniform(0.1, 0.9))
            shape = "four-eyes, one approval"
        else:
            shape = "material revision" if material else "first listing"
            claimed = self._claim(case_id)
        self.shapes[shape] += 1
        self.shapes[f"variant: {name}"] += 1
        self.rows.cases.append((
            case_id, "listing", product_id, seller_id, number, "open", evaluated.hits_json,
            evaluated.rules, evaluated.decision.four_eyes, decision_id,
            claimed[0] if claimed else None, claimed[1] if claimed else None, opened, None,
        ))  # fmt: skip

    def _listed(
        self, product_id: uuid.UUID, seller_id: uuid.UUID, patch: dict[str, Any], opened: datetime
    ) -> ProductMetadata:
        """A product listed (revision 1 live, its case approved) before ``opened``, with a
        material revision 2 pending; revision 2's metadata."""
        rng = self.rng
        listed = opened - timedelta(days=rng.uniform(20, 400))
        created = listed - timedelta(days=rng.uniform(1, 10))
        first = _patched(self._document(), {})
        live, _ = self._revision(product_id, 1, first, "initial", created)
        first_eval = self.evaluator(live)
        assert first_eval.decision.decision == "allow"
        first_decision = self._decision(product_id, first_eval, created)
        self._closed_case(product_id, seller_id, first_decision, first_eval, created, listed)
        # Its code is numbered and its certificate signed once the codes are reserved.
        code = "to be numbered"
        document = _patched(_revised(first, rng), patch)
        proposed, _ = self._revision(product_id, 2, document, "material", opened)
        self.rows.products.append((product_id, seller_id, "listed", _json(first), 1, 2, code,
                                   None, created, opened))  # fmt: skip
        self.listed_at[product_id] = listed
        return proposed

    def _claim(self, case_id: uuid.UUID) -> tuple[uuid.UUID, datetime] | None:
        """Claimed by the benchmark's reviewer (3 %), by the other (3 %), or not."""
        draw = self.rng.random()
        holder = (self.me if draw < MINE_SHARE
                  else self.other if draw < MINE_SHARE + OTHERS_SHARE else None)  # fmt: skip
        if holder is None:
            return None
        at = self.now - timedelta(minutes=self.rng.uniform(1, 25))
        self._audit(at, holder, "review.claimed", "review_case", case_id, {})
        return holder.token_id, at

    def _closed_case(
        self, product_id: uuid.UUID, seller_id: uuid.UUID, decision_id: int,
        evaluated: Evaluated, opened: datetime, closed: datetime,
    ) -> None:  # fmt: skip
        """Revision 1's case, approved when the product was listed."""
        case_id = uuid.uuid4()
        self.rows.cases.append((
            case_id, "listing", product_id, seller_id, 1, "approved", evaluated.hits_json,
            evaluated.rules, False, decision_id, self.other.token_id, closed, opened, closed,
        ))  # fmt: skip
        self.rows.reviews.append((case_id, self.other.token_id, self.other.org_id, "approve",
                                  "材料齐全,准予挂牌。", "[]", closed))  # fmt: skip
        self._audit(closed - timedelta(minutes=20), self.other, "review.claimed", "review_case",
                    case_id, {})  # fmt: skip
        self._audit(closed, self.other, "review.decided", "review_case", case_id,
                    {"verdict": "approve", "reason": "材料齐全,准予挂牌。", "evidence": [],
                     "closes": "approved"})  # fmt: skip

    def _approval(self, case_id: uuid.UUID, evaluated: Evaluated, at: datetime) -> None:
        evidence = [{"rule": hit.rule, "reference": f"doc://bench/evidence/{hit.rule}.pdf",
                     "sha256": EVIDENCE_SHA}
                    for hit in evaluated.decision.hits if hit.list == "cautious"]  # fmt: skip
        reason = "风险评估报告已核,同意;待第二名审核员复核。"
        self.rows.reviews.append((case_id, self.other.token_id, self.other.org_id, "approve",
                                  reason, _json(evidence), at))  # fmt: skip
        self._audit(at - timedelta(minutes=self.rng.uniform(5, 60)), self.other,
                    "review.claimed", "review_case", case_id, {})  # fmt: skip
        self._audit(at, self.other, "review.decided", "review_case", case_id,
                    {"verdict": "approve", "reason": reason, "evidence": evidence,
                     "closes": None})  # fmt: skip

    # --- writing ------------------------------------------------------------------------

    async def write(self, conn: asyncpg.Connection) -> None:
        """COPY every table in one transaction (policy decision ids and product codes
        reserved from their sequences first)."""
        async with conn.transaction():
            first = await conn.fetchval(
                "SELECT setval(pg_get_serial_sequence('policy_decisions', 'id'),"
                " nextval(pg_get_serial_sequence('policy_decisions', 'id')) + $1) - $1",
                self.next_decision_id,
            )  # ids first .. first + n - 1 are now this run's
            shift = first - 1
            self.rows.decisions = [(row[0] + shift, *row[1:]) for row in self.rows.decisions]
            self.rows.subjects = [(*row[:3], row[3] + shift) for row in self.rows.subjects]
            self.rows.cases = [(*row[:9], row[9] + shift, *row[10:]) for row in self.rows.cases]
            for attribute, table in _TABLES.items():
                rows = getattr(self.rows, attribute)
                if rows:
                    await conn.copy_to_table(
                        table, source=_copy_buffer(rows), columns=COLUMNS[table]
                    )


async def _codes(conn: asyncpg.Connection, builder: Builder) -> None:
    """Renumber the product codes from a block reserved in ``product_code_sequences``."""
    by_year: dict[int, list[int]] = {}
    for index, row in enumerate(builder.rows.products):
        if row[6] is not None:  # listed: numbered in the year it was listed
            by_year.setdefault(builder.listed_at[row[0]].year, []).append(index)
    for year, indexes in by_year.items():
        last = await conn.fetchval(
            "INSERT INTO product_code_sequences (year, last) VALUES ($1, $2)"
            " ON CONFLICT (year) DO UPDATE SET last = product_code_sequences.last + $2"
            " RETURNING last",
            year, len(indexes),
        )  # fmt: skip
        first = last - len(indexes) + 1
        for offset, index in enumerate(indexes):
            row = builder.rows.products[index]
            builder.rows.products[index] = (
                *row[:6], product_code(builder.settings.exchange_code, year, first + offset),
                *row[7:],
            )  # fmt: skip


async def seed_listing_cases(
    settings: Settings, pool: asyncpg.Pool, me: Reviewer, other: Reviewer, count: int,
    sellers: int, out: IO[str], *, seed_value: int | None = None,
) -> tuple[list[tuple[uuid.UUID, str]], Counter[str]]:  # fmt: skip
    """``count`` open listing cases (and their products, sellers, revisions, policy decisions,
    earlier closed cases, approvals and audit rows) with COPY. Returns the sellers (id, name)
    and how many cases of each shape and variant were made."""
    assert settings.database_url
    started = time.perf_counter()
    rng = random.Random(seed_value)  # noqa: S311 - synthetic data, not secrets
    policy = await PolicyService(pool, SystemClock()).current()
    async with pool.acquire() as conn:
        key = await KeyRing(load_master_key(settings.state_dir.resolve())).current(conn)
    builder = Builder(settings, Evaluator(policy), me, other, key, rng, datetime.now(UTC))
    builder.sellers_of(sellers)
    for _ in range(count):
        builder.listing()
    # The codes (and so the certificates) need their real numbers: sign after reserving them.
    raw = await asyncpg.connect(settings.database_url)  # no JSON codec: COPY takes text
    try:
        await raw.execute("SET synchronous_commit = off")
        await _codes(raw, builder)
        _resign(builder)
        await builder.write(raw)
        await raw.execute(
            "ANALYZE organisations, products, product_revisions, policy_decisions,"
            " policy_subjects, review_cases, review_decisions, audit_log"
        )
    finally:
        await raw.close()
    out.write(
        f"seeded {count:,} open listing cases ({builder.shapes['first listing']:,} first"
        f" listings, {builder.shapes['material revision']:,} material revisions,"
        f" {builder.shapes['four-eyes, one approval']:,} four-eyes with one approval;"
        f" {len(builder.evaluator.memo)} distinct policy evaluations) in"
        f" {time.perf_counter() - started:.1f}s\n"
    )
    return [(s[0], s[1]) for s in builder.sellers], builder.shapes


def _resign(builder: Builder) -> None:
    """Certificates over the product codes as reserved (`_codes` renumbered them)."""
    revisions = {(row[0], row[1]): row for row in builder.rows.revisions}
    sellers = {s[0]: s for s in builder.sellers}
    for index, row in enumerate(builder.rows.products):
        code = row[6]
        if code is None:
            continue
        product_id, seller_id = row[0], row[1]
        listed = builder.listed_at[product_id]
        revision = revisions[(product_id, 1)]
        metadata = msgspec.json.decode(revision[2], type=ProductMetadata)
        info = RevisionInfo(1, revision[3], "initial", listed, metadata)
        _, name, uscc = sellers[seller_id]
        claims = certificate_claims(builder.settings, code, info, name, uscc, listed)
        builder.rows.products[index] = (
            *row[:7],
            builder.key.sign_compact(claims, typ=CERTIFICATE_TYPE),
            *row[8:],
        )


# --- the other kinds, through the API ---------------------------------------------------------


async def open_through_api(
    client: Any, admin: str, pool: asyncpg.Pool, sellers: list[tuple[uuid.UUID, str]],
    orders: int, prohibitions: int, exporters: int, out: IO[str], *,
    seed_value: int | None = None,
) -> Counter[str]:  # fmt: skip
    """Order cases, legal-prohibition and exporter-status proposals opened as their flows open
    them (``client``: an httpx client on the running API); then spread over the 30 days."""
    from benchmarks.orders import SAMPLE_PRODUCT

    started = time.perf_counter()
    rng = random.Random(seed_value)  # noqa: S311 - synthetic data, not secrets
    auth = {"Authorization": f"Bearer {admin}"}
    opened: list[uuid.UUID] = []
    made: Counter[str] = Counter()

    async def ok(method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else auth
        response = await client.request(method, path, headers=headers | kwargs.pop("extra", {}),
                                        **kwargs)  # fmt: skip
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    async def org(role: str, name: str) -> tuple[str, str]:
        created = await ok("POST", "/v1/organisations", json={
            "name": name, "uscc": synthetic_uscc(uuid.uuid4().int), "roles": [role],
            "region": "310000",
            "contact": {"name": "压测", "email": "bench@example.cn", "phone": "+86 21 0000 0000"},
        })  # fmt: skip
        issued = await ok("POST", f"/v1/organisations/{created['id']}/tokens",
                          json={"name": "bench console", "roles": [role]})  # fmt: skip
        return created["id"], issued["token"]

    if orders:
        _, seller = await org("seller", "审核压测出境数据卖方有限公司")
        pi = SAMPLE_PRODUCT["classification"] | {"personal_info": _DEIDENTIFIED}
        document = SAMPLE_PRODUCT | {"name_zh": "跨境客户画像数据集(去标识化)",
                                     "classification": pi}  # fmt: skip
        product = await ok("POST", "/v1/products", seller, json=document)
        submitted = await ok("POST", f"/v1/products/{product['id']}/submit", seller)
        case = submitted["review"]["case_id"]
        evidence = [
            {"rule": hit["rule"], "reference": f"doc://bench/evidence/{hit['rule']}.pdf",
             "sha256": EVIDENCE_SHA}
            for hit in submitted["policy"]["hits"] if hit["list"] == "cautious"
        ]  # fmt: skip
        await ok("POST", f"/v1/reviews/{case}/claim")
        await ok("POST", f"/v1/reviews/{case}/decisions",
                 json={"verdict": "approve", "reason": "压测", "evidence": evidence})  # fmt: skip
        _, buyer = await org("buyer", "审核压测境外买方有限公司")
        for _ in range(orders):
            body = {"product_id": product["id"], "plan_id": SAMPLE_PRODUCT["plans"][0]["id"],
                    "purpose": "research", "territory": ["CN"], "buyer_country": "SG",
                    "delivery_country": "SG", "term_days": 30, "redistribution": False,
                    "quantity": 1, "pi_subject_count": ORDER_PI_SUBJECTS}  # fmt: skip
            placed = await ok("POST", "/v1/orders", buyer, json=body,
                              extra={"Idempotency-Key": str(uuid.uuid4())})  # fmt: skip
            if placed["state"] != "in_review":
                raise RuntimeError(f"an export order was not held for review: {placed}")
            opened.append(uuid.UUID(placed["review_case_id"]))
            made["order"] += 1
    listed = await pool.fetch(
        "SELECT id FROM products WHERE state = 'listed' AND draft->>'registration_code'"
        " = 'bench-console' AND NOT legal_prohibition ORDER BY random() LIMIT $1",
        prohibitions,
    )
    for row in listed:
        case = await ok("POST", f"/v1/products/{row['id']}/legal-prohibition", json={
            "prohibited": True, "reason": "行业主管部门通知暂停该类数据对外提供",
            "reference": "某省数据局通知(2026)第 12 号",
        })  # fmt: skip
        opened.append(uuid.UUID(case["id"]))
        made["legal_prohibition"] += 1
    for org_id, _name in sellers[:exporters]:
        case = await ok("POST", f"/v1/organisations/{org_id}/exporter-status", json={
            "ciio": rng.random() < 0.5, "exemption": None, "ftz_exempt": rng.random() < 0.5,
            "reason": "根据主管部门认定结果更新出境主体状态", "reference": "关键信息基础设施认定书",
        })  # fmt: skip
        opened.append(uuid.UUID(case["id"]))
        made["exporter_status"] += 1
    now = datetime.now(UTC)
    await pool.executemany(
        "UPDATE review_cases SET opened_at = $2 WHERE id = $1",
        [(case_id, now - timedelta(seconds=rng.uniform(60, DAYS * 86400))) for case_id in opened],
    )
    await pool.execute("ANALYZE review_cases")
    out.write(f"opened {made['order']} order cases, {made['legal_prohibition']} legal-prohibition"
              f" and {made['exporter_status']} exporter-status proposals through the API in"
              f" {time.perf_counter() - started:.1f}s\n")  # fmt: skip
    return made
