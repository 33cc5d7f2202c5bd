"""``dataex seed --products N``: realistic synthetic listed products, written with COPY.

Each product is a real listing: an organisation that sells it, a product row (listed, with a
product code and a signed listing certificate), its revision (complete metadata; digest over the
canonical JSON) and its catalog row (search tokens). Names and summaries are built from word
pools per sector in Chinese and English (city + topic + measure + kind, e.g. 杭州气象观测数据集 /
Hangzhou weather observation dataset), so two-character words such as 气象 or 医疗 match a few
thousand products per million, as real catalogues do. For benchmarks; never run on an exchange
whose catalogue matters (the products are marked ``seed`` in their registration code).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import random
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import asyncpg
import msgspec

from exchange.catalog.service import entry_values
from exchange.identity.uscc import synthetic_uscc
from exchange.listings.lifecycle import product_code
from exchange.listings.schemas import ProductMetadata, RevisionInfo
from exchange.listings.service import CERTIFICATE_TYPE, certificate_claims
from exchange.platform.canonical import canonical_json
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing, b64url, load_master_key

_SORTED = msgspec.json.Encoder(order="sorted")

CITIES = [("北京", "Beijing"), ("上海", "Shanghai"), ("广州", "Guangzhou"), ("深圳", "Shenzhen"),
          ("杭州", "Hangzhou"), ("成都", "Chengdu"), ("武汉", "Wuhan"), ("西安", "Xi'an"),
          ("南京", "Nanjing"), ("重庆", "Chongqing"), ("天津", "Tianjin"), ("苏州", "Suzhou"),
          ("郑州", "Zhengzhou"), ("长沙", "Changsha"), ("青岛", "Qingdao"), ("合肥", "Hefei"),
          ("厦门", "Xiamen"), ("贵阳", "Guiyang"), ("昆明", "Kunming"), ("沈阳", "Shenyang"),
          ("全国", "National"), ("长三角", "Yangtze Delta"), ("珠三角", "Pearl River Delta"),
          ("京津冀", "Jing-Jin-Ji")]  # fmt: skip
TOPICS: dict[str, list[tuple[str, str, list[str]]]] = {
    "MFG": [("工业设备", "industrial equipment", ["device_id", "vibration", "temperature"]),
            ("产线能耗", "production line energy", ["line_id", "kwh", "shift"]),
            ("供应链", "supply chain", ["supplier_id", "lead_time", "sku"]),
            ("质量检测", "quality inspection", ["batch_id", "defect_rate", "inspector"])],
    "AGRI": [("农作物", "crop", ["field_id", "yield_kg", "variety"]),
             ("农业气象", "agricultural weather", ["station", "rainfall_mm", "frost"]),
             ("畜牧", "livestock", ["herd_id", "headcount", "feed_kg"]),
             ("农产品价格", "farm produce price", ["market", "price", "grade"])],
    "TRADE": [("零售消费", "retail consumption", ["store_id", "sales", "category"]),
              ("跨境电商", "cross-border e-commerce", ["order_id", "country", "gmv"]),
              ("商圈客流", "shopping district footfall", ["district", "visitors", "hour"])],
    "TRANSPORT": [("港口货运", "port freight", ["port", "teu", "vessel"]),
                  ("公路物流", "road logistics", ["route", "trucks", "eta"]),
                  ("航空客运", "air passenger", ["flight", "passengers", "load_factor"]),
                  ("城市交通", "urban traffic", ["road_id", "speed", "congestion"])],
    "FINANCE": [("企业信用", "corporate credit", ["uscc", "score", "rating"]),
                ("供应链金融", "supply chain finance", ["invoice_id", "amount", "tenor"]),
                ("普惠金融", "inclusive finance", ["loan_id", "region", "default_rate"])],
    "SCI_TECH": [("专利", "patent", ["patent_no", "ipc", "citations"]),
                 ("科研仪器", "research instrument", ["instrument", "hours", "lab"]),
                 ("科技成果", "technology transfer", ["project", "licensee", "fee"])],
    "CULTURE_TOURISM": [("景区客流", "scenic area visitors", ["spot", "visitors", "date"]),
                        ("文物数字化", "cultural relic digitisation", ["relic_id", "era", "scan"]),
                        ("酒店住宿", "hotel stays", ["hotel", "occupancy", "adr"])],
    "HEALTH": [("医疗影像", "medical imaging", ["dicom_id", "modality", "finding"]),
               ("医疗服务", "medical service", ["hospital", "visits", "department"]),
               ("公共卫生", "public health", ["district", "cases", "vaccination"]),
               ("医保结算", "medical insurance claims", ["claim_id", "amount", "diagnosis"])],
    "EMERGENCY": [("灾害预警", "disaster warning", ["event_id", "level", "area"]),
                  ("安全生产", "work safety", ["site", "incidents", "inspection"]),
                  ("应急物资", "emergency supplies", ["depot", "stock", "item"])],
    "METEOROLOGY": [("气象观测", "weather observation", ["station", "temp_c", "humidity"]),
                    ("气候预测", "climate forecast", ["grid", "anomaly", "lead_days"]),
                    ("空气质量", "air quality", ["station", "pm25", "aqi"])],
    "URBAN_GOV": [("城市部件", "city components", ["asset_id", "type", "status"]),
                  ("政务服务", "government services", ["service", "requests", "wait"]),
                  ("人口迁徙", "population movement", ["origin", "destination", "flow"])],
    "GREEN_LOWCARBON": [("碳排放", "carbon emission", ["entity", "tco2e", "scope"]),
                        ("新能源", "renewable energy", ["plant", "mwh", "curtailment"]),
                        ("绿色电力", "green power", ["certificate", "mwh", "buyer"])],
    "OTHER": [("综合统计", "general statistics", ["indicator", "value", "period"])],
}  # fmt: skip
MEASURES = [("监测", "monitoring"), ("统计", "statistics"), ("明细", "records"),
            ("实时", "real-time"), ("历史", "historical"), ("月度", "monthly")]  # fmt: skip
KINDS = [("数据集", "dataset", "dataset"), ("指数", "index", "index"), ("报告", "report", "report"),
         ("接口", "API", "api"), ("模型", "model", "model"), ("看板", "dashboard", "visualisation"),
         ("服务", "service", "service"), ("工具", "toolkit", "tool")]  # fmt: skip
DELIVERIES = [["file"], ["api"], ["file", "api"], ["sandbox"], ["api", "sandbox"]]
PURPOSES = ["research", "marketing_analysis", "risk_control", "insurance_pricing", "planning"]

PERSONAL_INFO = {"present": False, "state": "anonymised", "sensitive": False,
                 "minors_under_14": False, "subject_count": 0,
                 "separate_consent_for_supply": False, "guardian_consent": False}  # fmt: skip


def product(rng: random.Random) -> dict[str, Any]:
    """One product's complete metadata (JSON-ready, no floats: its canonical JSON is stable)."""
    sector = rng.choice(list(TOPICS))
    topic_zh, topic_en, fields = rng.choice(TOPICS[sector])
    city_zh, city_en = rng.choice(CITIES)
    measure_zh, measure_en = rng.choice(MEASURES)
    kind_zh, kind_en, product_type = rng.choice(KINDS)
    price = rng.choice([0, 50_000, 200_000, 1_000_000, 5_000_000]) + rng.randrange(0, 10_000)
    free = rng.random() < 0.05
    return {
        "name_zh": f"{city_zh}{topic_zh}{measure_zh}{kind_zh}",
        "name_en": f"{city_en} {topic_en} {measure_en} {kind_en}",
        "summary": f"{city_zh}地区{topic_zh}{measure_zh}数据,按日更新,已脱敏处理,"
        f"适用于{rng.choice(['研究分析', '风险控制', '规划决策', '市场研究'])}。",
        "product_type": product_type,
        "sector": sector,
        "tags": [topic_zh, topic_en, city_zh],
        "manual": {
            "fields": [{"name": f, "type": "string", "meaning": f"{topic_zh}字段"} for f in fields],
            "scale": {"rows": rng.randrange(1_000, 100_000_000)},
            "time_coverage": {"start": f"{rng.randrange(2015, 2025)}-01-01"},
            "update_frequency": rng.choice(["daily", "weekly", "monthly", "realtime"]),
            "format": rng.choice(["csv", "parquet", "json"]),
            "sample": {"rows": [{fields[0]: "示例"}]},
        },
        "contact": {"name": "数据服务部", "email": "data@example.cn", "phone": "+86 571 0000 0000"},
        "source": {"kind": "self_generated", "lawful_statement": "自有业务数据。",
                   "legality_proof": True, "upstream_forbids_resale": False,
                   "evidence": [{"name": "来源证明", "uri": "doc://seed/proof",
                                 "sha256": hashlib.sha256(b"seed").hexdigest()}]},
        "classification": {"data_level": "important" if rng.random() < 0.1 else "general",
                           "general_grade": rng.randrange(1, 5), "personal_info": PERSONAL_INFO,
                           "third_party_rights": {"trade_secrets": False, "authorised": False},
                           "public_data": {"involved": False, "channel": "none"}},
        "rights": {"holding": False, "use": True, "operating": False},
        "delivery": rng.choice(DELIVERIES),
        "plans": [{"id": "std", "name": "标准版", "pricing": "subscription",
                   "price_fen": 0 if free else price, "free": free,
                   "purposes": rng.sample(PURPOSES, 2), "territory": ["CN"],
                   "max_term_days": rng.choice([90, 180, 365]), "redistribution": False,
                   "acceptance_days": 7}],
        "registration_code": "seed",
    }  # fmt: skip


def _copy_buffer(rows: list[tuple[Any, ...]]) -> io.BytesIO:
    """Text-format COPY data (tab separated, \\N for NULL, arrays as {..})."""

    def cell(value: Any) -> str:
        if value is None:
            return "\\N"
        if isinstance(value, list):
            inner = ",".join('"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
                             for v in value)  # fmt: skip
            return _escape("{" + inner + "}")
        if isinstance(value, datetime):
            return value.isoformat()
        return _escape(str(value))

    buffer = io.BytesIO()
    buffer.write("".join("\t".join(cell(v) for v in row) + "\n" for row in rows).encode())
    buffer.seek(0)
    return buffer


def _escape(text: str) -> str:
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))  # fmt: skip


@dataclass(frozen=True)
class _Job:
    """What a generating process needs (picklable)."""

    exchange_code: str
    exchange_name: str
    public_url: str
    year: int
    first_sequence: int
    count: int
    random_seed: int
    sellers: list[tuple[uuid.UUID, str, str]]
    kid: str
    private_key: bytes
    now: datetime


def _generate(job: _Job) -> tuple[bytes, bytes, bytes]:
    """COPY data for ``job.count`` products: products, product_revisions, catalog_entries."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from exchange.platform.signing import SigningKey

    rng = random.Random(job.random_seed)  # noqa: S311 - synthetic catalogue data, not secrets
    key = SigningKey(job.kid, Ed25519PrivateKey.from_private_bytes(job.private_key))
    settings = Settings(exchange_code=job.exchange_code, exchange_name=job.exchange_name)
    header = b64url(canonical_json({"alg": "EdDSA", "kid": key.kid, "typ": CERTIFICATE_TYPE}))
    product_rows, revision_rows, catalog_rows = [], [], []
    for i in range(job.count):
        document = product(rng)
        metadata = msgspec.convert(document, ProductMetadata)
        body = msgspec.json.encode(document, order="sorted")  # no floats: RFC 8785
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        seller_id, seller_name, seller_uscc = job.sellers[rng.randrange(len(job.sellers))]
        product_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        code = product_code(job.exchange_code, job.year, job.first_sequence + i)
        listed = job.now - timedelta(seconds=rng.randrange(2 * 365 * 86400))
        revision = RevisionInfo(1, digest, "initial", listed, metadata)
        claims = certificate_claims(settings, code, revision, seller_name, seller_uscc, listed)
        # = key.sign_compact(claims, ...): the claims hold no floats, so their sorted compact
        # JSON is their RFC 8785 form and the walk that checks it can be skipped here.
        signing_input = f"{header}.{b64url(_SORTED.encode(claims))}"
        certificate = f"{signing_input}.{b64url(key.private.sign(signing_input.encode()))}"
        values = entry_values(metadata)
        product_rows.append((product_id, seller_id, "listed", 1, code, certificate, listed,
                             listed))  # fmt: skip
        revision_rows.append((product_id, 1, body.decode(), digest, "initial", listed))
        catalog_rows.append((
            product_id, code, 1, seller_id, seller_name, values["name_zh"], values["name_en"],
            values["summary"], values["tags"], values["sector"], values["product_type"],
            values["delivery"], values["data_level"], values["price_min_fen"],
            values["price_max_fen"], listed, listed, values["tokens"],
            values["name_tokens"],
        ))  # fmt: skip
    return (
        _copy_buffer(product_rows).getvalue(),
        _copy_buffer(revision_rows).getvalue(),
        _copy_buffer(catalog_rows).getvalue(),
    )


CHUNK = 20_000
PRODUCT_COLUMNS = ["id", "seller_org_id", "state", "live_revision", "product_code",
                   "certificate", "created_at", "updated_at"]  # fmt: skip
REVISION_COLUMNS = ["product_id", "number", "metadata", "digest", "change", "created_at"]
CATALOG_COLUMNS = ["product_id", "product_code", "revision", "seller_org_id", "seller_name",
                   "name_zh", "name_en", "summary", "tags", "sector", "product_type", "delivery",
                   "data_level", "price_min_fen", "price_max_fen", "listed_at",
                   "updated_at", "tokens", "name_tokens"]  # fmt: skip


async def seed(settings: Settings, products: int, out: IO[str], *, seed_value: int = 7) -> int:
    """Generate in worker processes (one per core) while this one streams COPY; the catalog's
    secondary indexes are dropped for the load and rebuilt after it (far faster than keeping
    a GIN index current row by row)."""
    assert settings.database_url
    started = time.perf_counter()
    rng = random.Random(seed_value)  # noqa: S311 - synthetic catalogue data, not secrets
    keyring = KeyRing(load_master_key(settings.state_dir.resolve()))
    conn = await asyncpg.connect(settings.database_url)  # no JSON codec: COPY takes text
    try:
        await conn.execute("SET synchronous_commit = off; SET maintenance_work_mem = '512MB'")
        key_row = await conn.fetchrow(
            "SELECT kid, sealed_private FROM signing_keys WHERE purpose = 'exchange'"
            " ORDER BY created_at DESC, kid LIMIT 1"
        )
        if key_row is None:
            raise RuntimeError("no signing key: run `dataex migrate` first")
        key = keyring.open(key_row["kid"], bytes(key_row["sealed_private"]))
        now = datetime.now(UTC)
        sellers = [
            (
                uuid.uuid4(),
                f"种子数据科技{n}有限公司",
                synthetic_uscc(rng.randrange(31**9), "91330100"),
            )
            for n in range(max(10, products // 1000))
        ]
        await conn.copy_to_table(
            "organisations",
            source=_copy_buffer([
                (org, name, uscc, ["seller"], "330100",
                 '{"name": "数据服务部", "email": "data@example.cn", "phone": "+86 571 0000 0000"}',
                 False, now, now)
                for org, name, uscc in sellers
            ]),
            columns=["id", "name", "uscc", "roles", "region", "contact", "is_operator",
                     "created_at", "updated_at"],
        )  # fmt: skip
        last = await conn.fetchval(
            "INSERT INTO product_code_sequences (year, last) VALUES ($1, $2)"
            " ON CONFLICT (year) DO UPDATE SET last = product_code_sequences.last + $2"
            " RETURNING last",
            now.year, products,
        )  # fmt: skip
        first = last - products + 1
        # The count triggers would aggregate each chunk's tokens; counting once at the end is
        # far cheaper (and exact whatever the table held before).
        await conn.execute("ALTER TABLE catalog_entries DISABLE TRIGGER USER")
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            " AND tablename = 'catalog_entries' AND indexname <> 'catalog_entries_pkey'"
        )
        for index in indexes:
            await conn.execute(f'DROP INDEX "{index["indexname"]}"')
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
        )

        raw_key = key.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        jobs = [
            _Job(settings.exchange_code, settings.exchange_name, settings.public_url, now.year,
                 first + start, min(CHUNK, products - start), seed_value * 1_000_003 + start,
                 sellers, key.kid, raw_key, now)
            for start in range(0, products, CHUNK)
        ]  # fmt: skip
        try:
            await _load(conn, jobs, out, started)
        finally:
            await _restore(conn, indexes, out)
        await conn.execute("ANALYZE organisations, products, product_revisions")
        await conn.execute("VACUUM (ANALYZE) catalog_entries")  # index-only facet counts
    finally:
        await conn.close()
    out.write(f"seeded {products:,} listed products from {len(sellers):,} sellers in"
              f" {time.perf_counter() - started:.0f}s\n")  # fmt: skip
    return 0


async def _load(conn: asyncpg.Connection, jobs: list[_Job], out: IO[str], started: float) -> None:
    """Generate chunks in worker processes (a few ahead, bounded) and COPY each as it comes."""
    loop = asyncio.get_running_loop()
    done = 0
    with ProcessPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        window = (os.cpu_count() or 1) + 1
        pending = [loop.run_in_executor(pool, _generate, job) for job in jobs[:window]]
        for n, job in enumerate(jobs):
            product_data, revision_data, catalog_data = await pending[n]
            if n + window < len(jobs):
                pending.append(loop.run_in_executor(pool, _generate, jobs[n + window]))
            async with conn.transaction():
                for table, data, columns in (
                    ("products", product_data, PRODUCT_COLUMNS),
                    ("product_revisions", revision_data, REVISION_COLUMNS),
                    ("catalog_entries", catalog_data, CATALOG_COLUMNS),
                ):
                    await conn.copy_to_table(table, source=io.BytesIO(data), columns=columns)
            done += job.count
            out.write(f"  {done:,} products ({time.perf_counter() - started:.0f}s)\n")
            out.flush()


async def _restore(conn: asyncpg.Connection, indexes: list[Any], out: IO[str]) -> None:
    """Rebuild the dropped indexes, re-enable the count triggers and recount exactly."""
    out.write(f"  rebuilding {len(indexes)} catalog indexes and the facet counts\n")
    for index in indexes:
        await conn.execute(index["indexdef"])
    async with conn.transaction():
        await conn.execute("ALTER TABLE catalog_entries ENABLE TRIGGER USER")
        await conn.execute("LOCK TABLE catalog_entries IN SHARE MODE")
        await conn.execute(
            "DELETE FROM catalog_counts; DELETE FROM catalog_token_counts;"
            " INSERT INTO catalog_counts (sector, product_type, n)"
            " SELECT sector, product_type, count(*) FROM catalog_entries GROUP BY 1, 2;"
            " INSERT INTO catalog_token_counts (token, sector, product_type, n)"
            " SELECT t, sector, product_type, count(*)"
            " FROM catalog_entries, unnest(tokens) AS t GROUP BY 1, 2, 3"
        )
