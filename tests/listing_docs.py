"""A complete, valid product for listing tests, with single-field overrides."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from tests.policy_docs import CLEAN_PRODUCT

EVIDENCE = {
    "name": "来源合法性证明",
    "uri": "doc://seller/legality.pdf",
    "sha256": hashlib.sha256(b"legality").hexdigest(),
}


def metadata(**overrides: Any) -> dict[str, Any]:
    """Keys in ``overrides`` are dotted paths written with '__'."""
    classification = {
        k: copy.deepcopy(v)
        for k, v in CLEAN_PRODUCT.items()
        if k not in ("source", "legal_prohibition")
    }
    document: dict[str, Any] = {
        "name_zh": "城市气象观测数据",
        "name_en": "City weather observations",
        "summary": "全国地级市逐小时气象观测,含温度、湿度、风速。",
        "product_type": "dataset",
        "sector": "METEOROLOGY",
        "tags": ["气象", "weather"],
        "manual": {
            "fields": [
                {"name": "station", "type": "string", "meaning": "站点编号"},
                {"name": "temp_c", "type": "float", "meaning": "气温(摄氏度)"},
            ],
            "scale": {"rows": 12_000_000},
            "time_coverage": {"start": "2020-01-01"},
            "update_frequency": "hourly",
            "format": "parquet",
            "sample": {"rows": [{"station": "58367", "temp_c": 12.5}]},
        },
        "contact": {"name": "王五", "email": "wang@example.cn", "phone": "+86 21 6000 0000"},
        "source": {
            "kind": "self_generated",
            "lawful_statement": "自有观测站采集。",
            "legality_proof": True,
            "upstream_forbids_resale": False,
            "evidence": [EVIDENCE],
        },
        "classification": classification,
        "rights": {"holding": False, "use": True, "operating": False},
        "delivery": ["file", "api"],
        "plans": [
            {
                "id": "std",
                "name": "标准版",
                "pricing": "subscription",
                "price_fen": 1_000_000,
                "free": False,
                "purposes": ["research", "insurance_pricing"],
                "territory": ["CN"],
                "max_term_days": 365,
                "redistribution": False,
                "acceptance_days": 7,
            }
        ],
    }
    for key, value in overrides.items():
        *parents, leaf = key.split("__")
        node = document
        for name in parents:
            node = node[name]
        node[leaf] = value
    return document
