"""Cross-border route of an order (CAC Order No. 16, 2024), exactly as policy-rules.md has it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from contracts.policy.attributes import EvaluationDocument
from contracts.policy.schemas import CrossBorder

DOMESTIC = "CN"
SENSITIVE_ASSESSMENT_AT = 10_000
ASSESSMENT_AT = 1_000_000
STANDARD_CONTRACT_AT = 100_000
# Asia/Shanghai has had no daylight saving since 1991: a fixed +08:00 is exact.
SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")


def counting_year_start(at: datetime) -> datetime:
    """1 January 00:00 Asia/Shanghai of the year containing ``at``: where the counts restart."""
    local = at.astimezone(SHANGHAI)
    return datetime(local.year, 1, 1, tzinfo=SHANGHAI).astimezone(UTC)


def cross_border_route(document: EvaluationDocument) -> CrossBorder | None:
    """The route of an order; None for a listing (no order)."""
    order, exporter, product = document.order, document.exporter, document.product
    if order is None or exporter is None:
        return None
    if order.buyer_country == DOMESTIC and order.delivery_country == DOMESTIC:
        return CrossBorder("none", "domestic: buyer and delivery both in mainland China")
    pi = product.personal_info
    identifiable = pi.present and pi.state != "anonymised"
    n = exporter.ytd_pi_subjects + order.pi_subject_count
    s = exporter.ytd_sensitive_pi_subjects + order.pi_subject_count
    if product.data_level == "important":
        return CrossBorder("security_assessment", "1: important data leaves China")
    if identifiable and exporter.ciio:
        return CrossBorder(
            "security_assessment", "2: personal information exported by a CII operator"
        )
    if identifiable and (exporter.exemption is not None or exporter.ftz_exempt):
        reason = exporter.exemption or "free trade zone negative list does not cover it"
        return CrossBorder("exempt", f"3: exempt ({reason})")
    if identifiable and pi.sensitive:
        if s >= SENSITIVE_ASSESSMENT_AT:
            return CrossBorder(
                "security_assessment",
                f"4: sensitive personal information of {s:,} individuals this year (≥ 10,000)",
            )
        return CrossBorder(
            "standard_contract_or_certification",
            f"4: sensitive personal information of {s:,} individuals this year (< 10,000)",
        )
    if identifiable:
        if n >= ASSESSMENT_AT:
            return CrossBorder(
                "security_assessment",
                f"5: personal information of {n:,} individuals this year (≥ 1,000,000)",
            )
        if n >= STANDARD_CONTRACT_AT:
            return CrossBorder(
                "standard_contract_or_certification",
                f"5: personal information of {n:,} individuals this year (≥ 100,000)",
            )
        return CrossBorder(
            "exempt", f"5: personal information of {n:,} individuals this year (< 100,000)"
        )
    return CrossBorder("exempt", "6: no identifiable personal information and not important data")
