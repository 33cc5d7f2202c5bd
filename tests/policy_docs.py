"""Documents for policy tests: a clean baseline and single-attribute patches."""

from __future__ import annotations

import copy
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
