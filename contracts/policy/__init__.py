"""The negative and cautious lists as versioned, explainable data (policy-rules.md)."""

from contracts.policy.attributes import EvaluationDocument
from contracts.policy.evaluator import evaluate
from contracts.policy.rules import PolicyList, PolicyListError, load_policy_list, parse_policy_list
from contracts.policy.schemas import Decision, Hit

__all__ = [
    "Decision",
    "EvaluationDocument",
    "Hit",
    "PolicyList",
    "PolicyListError",
    "evaluate",
    "load_policy_list",
    "parse_policy_list",
]
