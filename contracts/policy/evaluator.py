"""The evaluator: a pure function of a document and a list version. No I/O, no clock."""

from __future__ import annotations

from typing import Any

from contracts.policy.attributes import EvaluationDocument
from contracts.policy.routing import cross_border_route
from contracts.policy.rules import PolicyList, Rule
from contracts.policy.schemas import CrossBorder, Decision, EvidenceItem, Fact, Hit, Outcome


def flatten(document: EvaluationDocument, cross_border: CrossBorder | None) -> dict[str, Any]:
    """Attribute path → value; the paths are exactly `attributes.ATTRIBUTES` (tested)."""
    p = document.product
    pi, src, tpr, pub = p.personal_info, p.source, p.third_party_rights, p.public_data
    flat: dict[str, Any] = {
        "product.data_level": p.data_level,
        "product.general_grade": p.general_grade,
        "product.personal_info.present": pi.present,
        "product.personal_info.state": pi.state,
        "product.personal_info.sensitive": pi.sensitive,
        "product.personal_info.minors_under_14": pi.minors_under_14,
        "product.personal_info.subject_count": pi.subject_count,
        "product.personal_info.separate_consent_for_supply": pi.separate_consent_for_supply,
        "product.personal_info.guardian_consent": pi.guardian_consent,
        "product.content_flags": p.content_flags,
        "product.source.kind": src.kind,
        "product.source.legality_proof": src.legality_proof,
        "product.source.upstream_forbids_resale": src.upstream_forbids_resale,
        "product.third_party_rights.trade_secrets": tpr.trade_secrets,
        "product.third_party_rights.authorised": tpr.authorised,
        "product.public_data.involved": pub.involved,
        "product.public_data.channel": pub.channel,
        "product.regulated_domains": p.regulated_domains,
        "product.legal_prohibition": p.legal_prohibition,
    }
    order, exporter = document.order, document.exporter
    if order is not None and exporter is not None:
        flat.update(
            {
                "order.buyer_country": order.buyer_country,
                "order.delivery_country": order.delivery_country,
                "order.redistribution": order.redistribution,
                "order.pi_subject_count": order.pi_subject_count,
                "exporter.ciio": exporter.ciio,
                "exporter.ytd_pi_subjects": exporter.ytd_pi_subjects,
                "exporter.ytd_sensitive_pi_subjects": exporter.ytd_sensitive_pi_subjects,
                "exporter.exemption": exporter.exemption,
                "exporter.ftz_exempt": exporter.ftz_exempt,
                "cross_border.route": cross_border.route if cross_border else None,
            }
        )
    return flat


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _hit(rule: Rule, flat: dict[str, Any], cross_border: CrossBorder | None) -> Hit:
    unique: dict[str, Any] = {}
    for path, value in rule.when.explain(flat):
        unique.setdefault(path, value)
    because = "; ".join(f"{path} = {_show(value)}" for path, value in unique.items())
    if "cross_border.route" in unique and cross_border is not None:
        because += f" [route rule {cross_border.basis}]"  # the counts behind a derived route
    four_eyes = rule.four_eyes or (
        rule.four_eyes_when is not None and rule.four_eyes_when.test(flat)
    )
    evidence = [
        EvidenceItem(code=item.code, zh=item.zh, en=item.en)
        for item in rule.evidence
        if item.when is None or item.when.test(flat)
    ]
    return Hit(
        rule=rule.id,
        list=rule.list,
        scope=rule.scope,
        title_zh=rule.title_zh,
        title_en=rule.title_en,
        explanation_zh=f"{rule.explanation_zh}(触发依据:{because})",
        explanation_en=f"{rule.explanation_en} (because {because})",
        remedy_zh=rule.remedy_zh,
        remedy_en=rule.remedy_en,
        evidence_required=evidence,
        four_eyes=four_eyes,
        facts=[Fact(path, value) for path, value in unique.items()],
        basis=rule.basis,
    )


def evaluate(document: EvaluationDocument, policy: PolicyList) -> Decision:
    """Evaluate a listing (product rules) or an order (all rules) under one list version.

    ``reject`` if any negative rule fires, else ``review`` if any cautious rule fires, else
    ``allow``. Hits come in the list's rule order; the result depends on nothing else.
    """
    is_order = document.order is not None
    cross_border = cross_border_route(document)
    flat = flatten(document, cross_border)
    rules = policy.rules if is_order else policy.product_rules
    hits = [_hit(rule, flat, cross_border) for rule in rules if rule.when.test(flat)]
    outcome: Outcome
    if any(hit.list == "negative" for hit in hits):
        outcome = "reject"
    elif hits:
        outcome = "review"
    else:
        outcome = "allow"
    return Decision(
        decision=outcome,
        list_version=policy.version,
        list_digest=policy.digest,
        evaluated="order" if is_order else "listing",
        hits=hits,
        four_eyes=any(hit.four_eyes for hit in hits),
        cross_border=cross_border,
    )
