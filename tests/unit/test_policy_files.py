"""Rule files: every kind of error is reported with the file, the rule and the field."""

from __future__ import annotations

import re

import msgspec
import pytest

from contracts.policy import PolicyListError, parse_policy_list
from contracts.policy.attributes import decode_document
from contracts.policy.rules import bundled_versions, latest_bundled, load_policy_list

GOOD_RULE = """
[[rules]]
id = "NEG-01"
list = "negative"
scope = "product"
title_zh = "核心数据"
title_en = "Core data"
when = { field = "product.data_level", equals = "core" }
explanation_zh = "核心数据"
explanation_en = "Core data"
remedy_zh = "不能交易"
remedy_en = "Cannot be traded"
basis = "DSL Art. 21"
"""
HEADER = 'version = "2099.1"\ntitle = "test"\n'


def issues_of(text: str):
    with pytest.raises(PolicyListError) as caught:
        parse_policy_list(HEADER + text, "2099.1.toml")
    return caught.value.issues, str(caught.value)


def test_a_good_file_parses_and_its_digest_ignores_formatting():
    first = parse_policy_list(HEADER + GOOD_RULE, "a.toml")
    second = parse_policy_list(HEADER + "\n\n# comment\n" + GOOD_RULE, "b.toml")
    assert first.digest == second.digest
    assert (
        first.digest
        != parse_policy_list(HEADER + GOOD_RULE.replace("core", "important"), "c").digest
    )


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        (
            ('field = "product.data_level"', 'field = "product.colour"'),
            "when.field",
            "unknown attribute 'product.colour'",
        ),
        (('equals = "core"', 'resembles = "core"'), "when", "unknown operator 'resembles'"),
        (('equals = "core"', "equals = 3"), "when.equals", "got 3"),
        (
            ('equals = "core"', 'equals = "secret"'),
            "when.equals",
            "'secret' is not a value of product.data_level",
        ),
        (('equals = "core"', "gte = 2"), "when.gte", "compares numbers"),
        (('explanation_en = "Core data"\n', ""), "explanation_en", "missing explanation"),
        (
            (
                'field = "product.data_level", equals = "core"',
                'field = "order.redistribution", equals = true',
            ),
            "when.field",
            "exists only for orders",
        ),
        (
            (
                'when = { field = "product.data_level", equals = "core" }',
                'when = { ref = "nowhere" }',
            ),
            "when.ref",
            "unknown definition 'nowhere'",
        ),
        (('list = "negative"', 'list = "grey"'), "list", "must be 'negative' or 'cautious'"),
        (
            ('basis = "DSL Art. 21"', 'basis = "DSL Art. 21"\ncolour = "red"'),
            "colour",
            "unknown key",
        ),
    ],
)
def test_each_kind_of_error_names_file_rule_and_field(change, field, says):
    old, new = change
    assert old in GOOD_RULE
    issues, message = issues_of(GOOD_RULE.replace(old, new))
    assert any(i.field == field and says in i.message and i.rule == "NEG-01" for i in issues), (
        issues
    )
    assert f"2099.1.toml: rule NEG-01: {field}: " in message


def test_duplicate_ids_are_refused():
    issues, message = issues_of(GOOD_RULE + GOOD_RULE)
    assert [(i.rule, i.field) for i in issues] == [("NEG-01", "id")]
    assert "duplicate id" in message


def test_a_cautious_rule_must_say_which_evidence_it_needs():
    text = GOOD_RULE.replace('id = "NEG-01"', 'id = "CAU-01"').replace('"negative"', '"cautious"')
    issues, _ = issues_of(text)
    assert [(i.rule, i.field) for i in issues] == [("CAU-01", "evidence")]


def test_all_problems_are_reported_at_once():
    text = GOOD_RULE.replace('"product.data_level"', '"product.x"').replace(
        'explanation_zh = "核心数据"\n', ""
    )
    issues, _ = issues_of(text)
    assert {i.field for i in issues} == {"when.field", "explanation_zh"}


def test_broken_toml_names_the_file():
    with pytest.raises(PolicyListError, match=r"^broken\.toml: toml: "):
        parse_policy_list("version = ", "broken.toml")


def test_the_bundled_list_is_2026_1_with_17_rules():
    assert bundled_versions()[0].name == "2026.1.toml"
    policy = load_policy_list(bundled_versions()[0])
    assert policy.version == "2026.1"
    assert [r.id for r in policy.rules] == [f"NEG-0{i}" for i in range(1, 9)] + [
        f"CAU-0{i}" for i in range(1, 10)
    ]
    assert latest_bundled().digest == policy.digest or len(bundled_versions()) > 1


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["product"].update(colour="red"), "$.product"),  # "unknown field `colour`"
        (
            lambda d: d["product"]["personal_info"].update(present="yes"),
            "$.product.personal_info.present",
        ),
        (lambda d: d["product"].update(data_level="secret"), "$.product.data_level"),
        (lambda d: d["product"]["source"].pop("legality_proof"), "$.product.source"),
        (lambda d: d["product"].update(general_grade=5), "$.product.general_grade"),
    ],
)
def test_bad_documents_are_errors_naming_the_path(mutate, path):
    from tests.kit.documents import raw

    document = raw()
    mutate(document)
    with pytest.raises(msgspec.ValidationError, match="at `" + re.escape(path) + "`"):
        decode_document(msgspec.json.encode(document))


def test_an_order_without_exporter_is_refused():
    from tests.kit.documents import raw

    document = raw(order=True)
    del document["exporter"]
    with pytest.raises(msgspec.ValidationError, match="order and exporter come together"):
        decode_document(msgspec.json.encode(document))
