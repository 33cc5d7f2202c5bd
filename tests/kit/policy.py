"""A candidate policy list for replay and publishing tests: the bundled 2026.1 as 2026.2, with
health data made a negative rule (NEG-09) and CAU-02 (identifiable personal information)
dropped, so open decisions both gain a rule and lose one."""

from __future__ import annotations

from contracts.policy.rules import POLICY_DIR

SOURCE = (POLICY_DIR / "2026.1.toml").read_text(encoding="utf-8")
NEG_09 = """
[[rules]]
id = "NEG-09"
list = "negative"
scope = "product"
title_zh = "医疗健康数据暂停交易"
title_en = "Health data suspended"
when = { field = "product.regulated_domains", any_of = ["health"] }
explanation_zh = "医疗健康数据暂停交易"
explanation_en = "Health data is suspended from trading"
remedy_zh = "暂停期间不能交易"
remedy_en = "It cannot be traded during the suspension"
basis = "exchange decision"
"""


def candidate() -> str:
    """The 2026.2 candidate's TOML source."""
    head, *rules = SOURCE.replace('version = "2026.1"', 'version = "2026.2"').split("\n[[rules]]\n")
    kept = [rule for rule in rules if not rule.startswith('id = "CAU-02"')]
    assert len(kept) == len(rules) - 1
    return "\n[[rules]]\n".join([head, *kept]) + NEG_09
