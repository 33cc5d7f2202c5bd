"""Properties of the evaluator for all documents (Hypothesis)."""

from __future__ import annotations

import typing
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.policy import evaluate
from contracts.policy.attributes import ATTRIBUTES, ContentFlag, EvaluationDocument
from contracts.policy.evaluator import flatten
from contracts.policy.routing import cross_border_route
from contracts.policy.rules import latest_bundled
from tests.kit.documents import apply, doc

POLICY = latest_bundled()
RANK = {"allow": 0, "review": 1, "reject": 2}
FLAGS = list(typing.get_args(ContentFlag))
counts = st.integers(0, 2_000_000)

products = st.fixed_dictionaries(
    {
        "data_level": st.sampled_from(["general", "important", "core"]),
        "general_grade": st.one_of(st.none(), st.integers(1, 4)),
        "personal_info": st.fixed_dictionaries(
            {
                "present": st.booleans(),
                "state": st.sampled_from(["identified", "deidentified", "anonymised"]),
                "sensitive": st.booleans(),
                "minors_under_14": st.booleans(),
                "subject_count": counts,
                "separate_consent_for_supply": st.booleans(),
                "guardian_consent": st.booleans(),
            }
        ),
        "content_flags": st.lists(st.sampled_from(FLAGS), max_size=3, unique=True),
        "source": st.fixed_dictionaries(
            {
                "kind": st.sampled_from(
                    [
                        "self_generated",
                        "collected",
                        "purchased",
                        "crawled",
                        "public_data",
                        "unknown",
                    ]
                ),
                "legality_proof": st.booleans(),
                "upstream_forbids_resale": st.booleans(),
            }
        ),
        "third_party_rights": st.fixed_dictionaries(
            {"trade_secrets": st.booleans(), "authorised": st.booleans()}
        ),
        "public_data": st.fixed_dictionaries(
            {
                "involved": st.booleans(),
                "channel": st.sampled_from(["open_data", "authorised_operation", "none"]),
            }
        ),
        "regulated_domains": st.lists(
            st.sampled_from(["automotive", "health", "finance"]), max_size=2, unique=True
        ),
        "legal_prohibition": st.booleans(),
    }
)
orders = st.fixed_dictionaries(
    {
        "buyer_country": st.sampled_from(["CN", "US", "SG"]),
        "delivery_country": st.sampled_from(["CN", "DE"]),
        "redistribution": st.booleans(),
        "pi_subject_count": counts,
    }
)
exporters = st.fixed_dictionaries(
    {
        "ciio": st.booleans(),
        "ytd_pi_subjects": counts,
        "ytd_sensitive_pi_subjects": st.integers(0, 20_000),
        "exemption": st.one_of(
            st.none(), st.sampled_from(["contract_with_individual", "emergency"])
        ),
        "ftz_exempt": st.booleans(),
    }
)
documents = st.one_of(
    st.fixed_dictionaries({"product": products}),
    st.fixed_dictionaries({"product": products, "order": orders, "exporter": exporters}),
)


def decide(document):
    return evaluate(doc(document), POLICY)


@given(documents)
def test_reject_dominates_review_dominates_allow(document):
    decision = decide(document)
    lists = {hit.list for hit in decision.hits}
    if "negative" in lists:
        assert decision.decision == "reject"
    elif "cautious" in lists:
        assert decision.decision == "review"
    else:
        assert decision.decision == "allow" and decision.hits == []


@given(documents)
def test_evaluation_is_deterministic(document):
    assert decide(document) == decide(document)
    assert decide(document).list_digest == POLICY.digest


def _riskier(document, draw):
    """One strictly riskier variant of ``document``, chosen by Hypothesis."""
    product = document["product"]
    options: list[dict[str, Any]] = []
    missing = [flag for flag in FLAGS if flag not in product["content_flags"]]
    if missing:
        options.append(
            {"product.content_flags": [*product["content_flags"], draw(st.sampled_from(missing))]}
        )
    options.append({"product.personal_info.separate_consent_for_supply": False})
    options.append({"product.personal_info.guardian_consent": False})
    higher = {"general": ["important", "core"], "important": ["core"], "core": []}[
        product["data_level"]
    ]
    if higher:
        options.append({"product.data_level": draw(st.sampled_from(higher))})
    if "order" in document:
        more = draw(st.integers(1, 2_000_000))
        options.append({"exporter.ytd_pi_subjects": document["exporter"]["ytd_pi_subjects"] + more})
        options.append(
            {
                "exporter.ytd_sensitive_pi_subjects": document["exporter"][
                    "ytd_sensitive_pi_subjects"
                ]
                + more
            }
        )
        options.append({"order.pi_subject_count": document["order"]["pi_subject_count"] + more})
    return apply(document, draw(st.sampled_from(options)))


@settings(max_examples=300)
@given(documents, st.data())
def test_a_riskier_document_is_never_decided_more_permissively(document, data):
    riskier = _riskier(document, data.draw)
    assert RANK[decide(riskier).decision] >= RANK[decide(document).decision]


@given(documents)
def test_flatten_covers_exactly_the_attribute_schema(document):
    d: EvaluationDocument = doc(document)
    keys = set(flatten(d, cross_border_route(d)))
    expected = {
        path for path, a in ATTRIBUTES.items() if d.order is not None or a.scope == "product"
    }
    assert keys == expected
