"""Documents for tests: policy evaluation documents (a clean baseline and single-attribute
patches) and a complete, valid product for listing (with single-field overrides)."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import msgspec

from contracts.policy.attributes import EvaluationDocument

CLEAN_PRODUCT: dict[str, Any] = {
    "data_level": "general",
    "general_grade": 2,
    "personal_info": {
        "present": False,
        "state": "anonymised",
        "sensitive": False,
        "minors_under_14": False,
        "subject_count": 0,
        "separate_consent_for_supply": False,
        "guardian_consent": False,
    },
    "content_flags": [],
    "source": {"kind": "self_generated", "legality_proof": True, "upstream_forbids_resale": False},
    "third_party_rights": {"trade_secrets": False, "authorised": False},
    "public_data": {"involved": False, "channel": "none"},
    "regulated_domains": [],
    "legal_prohibition": False,
}
DOMESTIC_ORDER: dict[str, Any] = {
    "buyer_country": "CN",
    "delivery_country": "CN",
    "redistribution": False,
    "pi_subject_count": 0,
}
EXPORTER: dict[str, Any] = {
    "ciio": False,
    "ytd_pi_subjects": 0,
    "ytd_sensitive_pi_subjects": 0,
    "exemption": None,
    "ftz_exempt": False,
}
# Identifiable (de-identified) personal information supplied with consent: fires CAU-02 only.
DEIDENTIFIED = {
    "product.personal_info.present": True,
    "product.personal_info.state": "deidentified",
    "product.personal_info.separate_consent_for_supply": True,
    "product.personal_info.subject_count": 120_000,
}


def raw(order: bool = False, **patch: Any) -> dict[str, Any]:
    """A document as JSON-ready data; ``patch`` keys are dotted paths with '.' written as '__'."""
    document: dict[str, Any] = {"product": copy.deepcopy(CLEAN_PRODUCT)}
    if order:
        document["order"] = copy.deepcopy(DOMESTIC_ORDER)
        document["exporter"] = copy.deepcopy(EXPORTER)
    return apply(document, {key.replace("__", "."): value for key, value in patch.items()})


def apply(document: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    document = copy.deepcopy(document)
    for path, value in patch.items():
        *parents, leaf = path.split(".")
        node = document
        for name in parents:
            node = node[name]
        node[leaf] = value
    return document


def doc(document: dict[str, Any]) -> EvaluationDocument:
    return msgspec.convert(document, EvaluationDocument)


# --- products for listing ---------------------------------------------------------------------

EVIDENCE = {
    "name": "来源合法性证明",
    "uri": "doc://seller/legality.pdf",
    "sha256": hashlib.sha256(b"legality").hexdigest(),
}


def metadata(**overrides: Any) -> dict[str, Any]:
    """A complete, valid product. Keys in ``overrides`` are dotted paths written with '__'."""
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


# Identifiable (de-identified) personal information supplied with consent, for a product's
# classification: one cautious hit (CAU-02) at listing.
DEIDENTIFIED_PI = {
    "present": True,
    "state": "deidentified",
    "sensitive": False,
    "minors_under_14": False,
    "subject_count": 50_000,
    "separate_consent_for_supply": True,
    "guardian_consent": False,
}


def nested(depth: int) -> bytes:
    """A JSON object nested ``depth`` objects deep: {"a":{"a":…{}…}}."""
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)
