"""``dataex policy …`` and ``dataex bench policy``: the policy engine from the command line."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO

import msgspec

from contracts.policy.attributes import decode_document
from contracts.policy.evaluator import evaluate
from contracts.policy.rules import PolicyList, PolicyListError, latest_bundled, load_policy_list

INVALID = 2


def _read(path: str) -> bytes:
    return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()


def _policy(list_file: str | None) -> PolicyList:
    return load_policy_list(Path(list_file)) if list_file else latest_bundled()


def evaluate_command(path: str, list_file: str | None, out: IO[str], err: IO[str]) -> int:
    """Print the decision as JSON: exit 0 whatever the decision, 2 for invalid input."""
    try:
        policy = _policy(list_file)
        document = decode_document(_read(path))
    except OSError as error:
        print(f"dataex policy evaluate: cannot read {path}: {error.strerror}", file=err)
        return INVALID
    except PolicyListError as error:
        print(f"dataex policy evaluate: invalid policy list:\n{error}", file=err)
        return INVALID
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        print(f"dataex policy evaluate: invalid document {path}: {error}", file=err)
        return INVALID
    decision = evaluate(document, policy)
    print(msgspec.json.format(msgspec.json.encode(decision), indent=2).decode(), file=out)
    return 0


def check_command(path: str, out: IO[str], err: IO[str]) -> int:
    try:
        policy = load_policy_list(Path(path))
    except PolicyListError as error:
        print(f"{len(error.issues)} problem(s):\n{error}", file=err)
        return INVALID
    negative = sum(rule.list == "negative" for rule in policy.rules)
    print(
        f"{path}: list {policy.version} is valid: {negative} negative and"
        f" {len(policy.rules) - negative} cautious rules, digest {policy.digest}",
        file=out,
    )
    return 0


def bench_command(seconds: float, out: IO[str]) -> int:
    """Evaluations per second on one core for a typical cross-border order document."""
    policy = latest_bundled()
    raw = msgspec.json.encode(TYPICAL_ORDER)
    document = decode_document(raw)
    results = {}

    def decoded() -> object:
        return evaluate(document, policy)

    def from_json() -> object:
        return evaluate(decode_document(raw), policy)

    runs: list[tuple[str, Callable[[], object]]] = [
        ("evaluate (decoded document)", decoded),
        ("decode JSON + evaluate", from_json),
    ]
    for name, run in runs:
        for _ in range(1000):
            run()  # warm-up
        count, started = 0, time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            for _ in range(500):
                run()
            count += 500
        elapsed = time.perf_counter() - started
        results[name] = count / elapsed
        rate, micros = count / elapsed, 1e6 * elapsed / count
        print(f"{name:<30} {rate:>10,.0f} evaluations/s ({micros:.1f} µs each)", file=out)
    decision = evaluate(document, policy)
    print(
        f"typical order decides {decision.decision} with {[h.rule for h in decision.hits]},"
        f" route {decision.cross_border.route if decision.cross_border else None}",
        file=out,
    )
    return 0


def parse_instant(text: str) -> datetime:
    instant = datetime.fromisoformat(text)
    if instant.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z or +08:00)")
    return instant


TYPICAL_ORDER = {
    "product": {
        "data_level": "general",
        "general_grade": 2,
        "personal_info": {
            "present": True,
            "state": "deidentified",
            "sensitive": False,
            "minors_under_14": False,
            "subject_count": 120000,
            "separate_consent_for_supply": True,
            "guardian_consent": False,
        },
        "content_flags": [],
        "source": {"kind": "collected", "legality_proof": True, "upstream_forbids_resale": False},
        "third_party_rights": {"trade_secrets": False, "authorised": False},
        "public_data": {"involved": False, "channel": "none"},
        "regulated_domains": ["finance"],
        "legal_prohibition": False,
    },
    "order": {
        "buyer_country": "SG",
        "delivery_country": "SG",
        "redistribution": False,
        "pi_subject_count": 20000,
    },
    "exporter": {
        "ciio": False,
        "ytd_pi_subjects": 90000,
        "ytd_sensitive_pi_subjects": 0,
        "exemption": None,
        "ftz_exempt": False,
    },
}
