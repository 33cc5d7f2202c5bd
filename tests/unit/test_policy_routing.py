"""Cross-border routes, exactly as the table in policy-rules.md; thresholds at N-1, N, N+1."""

from datetime import UTC, datetime

import pytest

from contracts.policy.routing import counting_year_start, cross_border_route
from tests.kit.documents import apply, doc, raw

PI = {
    "product.personal_info.present": True,
    "product.personal_info.state": "deidentified",
    "product.personal_info.separate_consent_for_supply": True,
}
ABROAD = {"order.buyer_country": "SG"}


def route(patch):
    result = cross_border_route(doc(apply(raw(order=True), patch)))
    assert result is not None
    return result.route


def test_a_listing_has_no_route():
    assert cross_border_route(doc(raw())) is None


@pytest.mark.parametrize(
    "patch", [{}, {"order.delivery_country": "CN"}, PI, PI | {"exporter.ciio": True}]
)
def test_domestic_orders_have_route_none(patch):
    assert route(patch) == "none"


def test_delivery_abroad_alone_makes_an_order_cross_border():
    assert route(PI | {"order.delivery_country": "HK", "order.pi_subject_count": 200_000}) == (
        "standard_contract_or_certification"
    )


@pytest.mark.parametrize(
    ("ytd", "order", "expected"),
    [
        (99_998, 1, "exempt"),  # N = 99,999
        (99_999, 1, "standard_contract_or_certification"),  # N = 100,000
        (100_000, 1, "standard_contract_or_certification"),  # N = 100,001
        (999_998, 1, "standard_contract_or_certification"),  # N = 999,999
        (999_999, 1, "security_assessment"),  # N = 1,000,000
        (1_000_000, 1, "security_assessment"),  # N = 1,000,001
    ],
)
def test_non_sensitive_thresholds_count_this_order_and_the_year_so_far(ytd, order, expected):
    assert (
        route(PI | ABROAD | {"exporter.ytd_pi_subjects": ytd, "order.pi_subject_count": order})
        == expected
    )


@pytest.mark.parametrize(
    ("ytd", "expected"),
    [
        (9_998, "standard_contract_or_certification"),
        (9_999, "security_assessment"),
        (10_000, "security_assessment"),
    ],
)
def test_sensitive_threshold_at_10000(ytd, expected):
    patch = (
        PI
        | ABROAD
        | {
            "product.personal_info.sensitive": True,
            "exporter.ytd_sensitive_pi_subjects": ytd,
            "order.pi_subject_count": 1,
        }
    )
    assert route(patch) == expected


def test_a_single_order_reaching_the_threshold_alone_counts():
    assert (
        route(PI | ABROAD | {"order.pi_subject_count": 100_000})
        == "standard_contract_or_certification"
    )
    assert route(PI | ABROAD | {"order.pi_subject_count": 99_999}) == "exempt"


def test_important_data_needs_assessment_whatever_else_holds():
    assert route(
        ABROAD | {"product.data_level": "important", "exporter.exemption": "emergency"}
    ) == ("security_assessment")


def test_ciio_with_personal_information_needs_assessment_even_when_few():
    assert (
        route(PI | ABROAD | {"exporter.ciio": True, "order.pi_subject_count": 1})
        == "security_assessment"
    )
    # A CIIO exporting anonymised data is rule 6.
    assert route(ABROAD | {"exporter.ciio": True}) == "exempt"


@pytest.mark.parametrize(
    "patch", [{"exporter.exemption": "cross_border_hr"}, {"exporter.ftz_exempt": True}]
)
def test_exemptions_come_before_the_counts(patch):
    big = (
        PI | ABROAD | {"product.personal_info.sensitive": True, "order.pi_subject_count": 5_000_000}
    )
    assert route(big | patch) == "exempt"
    assert route(big) == "security_assessment"


def test_anonymised_data_is_exempt_whatever_the_counts():
    assert route(ABROAD | {"order.pi_subject_count": 9_000_000}) == "exempt"


def test_counts_restart_on_1_january_in_shanghai():
    # 31 Dec 16:00 UTC is already 1 Jan 00:00 in Shanghai.
    assert counting_year_start(datetime(2026, 12, 31, 16, 0, tzinfo=UTC)) == datetime(
        2026, 12, 31, 16, 0, tzinfo=UTC
    )
    assert counting_year_start(datetime(2026, 12, 31, 15, 59, tzinfo=UTC)) == datetime(
        2025, 12, 31, 16, 0, tzinfo=UTC
    )


def test_the_exemptions_staff_record_are_the_policy_attributes_values():
    """The identity room records an exporter's exemption (it cannot import the policy room,
    above it); the values must be the ones ``exporter.exemption`` takes."""
    import typing

    from contracts.policy.attributes import Exemption, Exporter
    from exchange.identity.schemas import ExporterStatus, ExportExemption

    assert set(typing.get_args(ExportExemption)) == set(typing.get_args(Exemption))
    recorded = {"ciio", "exemption", "ftz_exempt"}
    assert set(ExporterStatus.__struct_fields__) == recorded < set(Exporter.__struct_fields__)
