"""Pure rules of a listing: what counts as a material change, product codes, the policy document.

Its states and transition table are in `exchange.listings.states`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

import msgspec

from contracts.policy.attributes import EvaluationDocument
from contracts.policy.attributes import Product as PolicyProduct
from contracts.policy.attributes import Source as PolicySource
from exchange.listings.schemas import ProductMetadata, SandboxTerms
from exchange.platform.errors import FieldError

# A change to any of these needs review before it goes live; the others are cosmetic.
COSMETIC_FIELDS: Final = frozenset({"summary", "tags", "name_en"})
COSMETIC_MANUAL_FIELDS: Final = frozenset({"sample"})


def changed_fields(old: ProductMetadata, new: ProductMetadata) -> list[str]:
    """Dotted names of the top-level (and manual) fields that differ."""
    a, b = msgspec.to_builtins(old), msgspec.to_builtins(new)
    changed: list[str] = []
    for key in sorted(set(a) | set(b)):
        if key == "manual" and key in a and key in b:
            changed += [
                f"manual.{k}"
                for k in sorted(set(a[key]) | set(b[key]))
                if a[key].get(k) != b[key].get(k)
            ]
        elif a.get(key) != b.get(key):
            changed.append(key)
    return changed


def is_material(changed: list[str]) -> bool:
    for name in changed:
        top, _, sub = name.partition(".")
        if top == "manual" and sub in COSMETIC_MANUAL_FIELDS:
            continue
        if top not in COSMETIC_FIELDS:
            return True
    return False


def metadata_problems(m: ProductMetadata) -> list[FieldError]:
    """Rules across fields that types alone cannot say."""
    problems: list[FieldError] = []

    def bad(path: str, message: str) -> None:
        problems.append(FieldError(path=path, message=message, source="body"))

    scale = m.manual.scale
    if scale.rows is None and scale.size_bytes is None and scale.calls_per_day is None:
        bad("manual.scale", "give at least one of rows, size_bytes, calls_per_day")
    coverage = m.manual.time_coverage
    if coverage.end is not None and coverage.end < coverage.start:
        bad("manual.time_coverage.end", "ends before it starts")
    if not m.manual.sample.rows and m.manual.sample.file is None:
        bad("manual.sample", "give a few sample rows or a sample file")
    if not (m.rights.holding or m.rights.use or m.rights.operating):
        bad("rights", "grant at least one of holding, use, operating")
    if len(set(m.delivery)) != len(m.delivery):
        bad("delivery", "each delivery mode once")
    problems += _plan_problems(m)
    pi = m.classification.personal_info
    if m.classification.data_level == "general" and m.classification.general_grade is None:
        bad("classification.general_grade", "general data needs its grade (1-4)")
    if m.classification.data_level != "general" and m.classification.general_grade is not None:
        bad("classification.general_grade", "only general data has a grade")
    if pi.present and pi.subject_count == 0:
        bad(
            "classification.personal_info.subject_count",
            "personal information is present: how many individuals?",
        )
    return problems


def _plan_problems(m: ProductMetadata) -> list[FieldError]:
    problems: list[FieldError] = []

    def bad(path: str, message: str) -> None:
        problems.append(FieldError(path=path, message=message, source="body"))

    seen: set[str] = set()
    for i, plan in enumerate(m.plans):
        if plan.id in seen:
            bad(f"plans[{i}].id", f"duplicate plan id {plan.id!r}")
        seen.add(plan.id)
        if plan.free and plan.price_fen != 0:
            bad(f"plans[{i}].price_fen", "a free plan has price 0")
        if not plan.free and plan.price_fen <= 0:
            bad(f"plans[{i}].price_fen", "a paid plan costs more than 0 fen (or set free: true)")
        if plan.redistribution and not m.rights.operating:
            bad(
                f"plans[{i}].redistribution",
                "redistribution needs the operating right (rights.operating)",
            )
        if plan.sandbox is not None:
            problems += _sandbox_problems(m, i, plan.sandbox)
    for i, spec in enumerate(m.manual.fields):
        if spec.bounds is not None and not spec.bounds.lower < spec.bounds.upper:
            bad(f"manual.fields[{i}].bounds", "lower must be below upper")
        if len(set(spec.categories)) != len(spec.categories):
            bad(f"manual.fields[{i}].categories", "each category once")
    return problems


def _sandbox_problems(m: ProductMetadata, i: int, terms: SandboxTerms) -> list[FieldError]:
    """Sandbox terms belong to a product delivered by sandbox; ε is counted in micro-ε."""
    problems: list[FieldError] = []

    def bad(path: str, message: str) -> None:
        problems.append(FieldError(path=path, message=message, source="body"))

    if "sandbox" not in m.delivery:
        bad(f"plans[{i}].sandbox", "sandbox terms need sandbox delivery (delivery: sandbox)")
    if terms.wall_seconds < terms.cpu_seconds:
        bad(f"plans[{i}].sandbox.wall_seconds", "the wall limit is at least the CPU limit")
    if terms.epsilon_per_job > terms.epsilon_total:
        bad(f"plans[{i}].sandbox.epsilon_per_job", "one job spends at most the total ε")
    for name in ("epsilon_total", "epsilon_per_job"):
        micro = Decimal(repr(float(getattr(terms, name)))) * 1_000_000
        if micro != micro.to_integral_value():
            bad(f"plans[{i}].sandbox.{name}", "ε is a multiple of 0.000001")
    return problems


def evaluation_document(
    metadata: ProductMetadata, *, legal_prohibition: bool
) -> EvaluationDocument:
    """What the policy engine evaluates for a listing."""
    c, s = metadata.classification, metadata.source
    return EvaluationDocument(
        product=PolicyProduct(
            data_level=c.data_level,
            general_grade=c.general_grade,
            personal_info=c.personal_info,
            content_flags=list(c.content_flags),
            source=PolicySource(
                kind=s.kind,
                legality_proof=s.legality_proof,
                upstream_forbids_resale=s.upstream_forbids_resale,
            ),
            third_party_rights=c.third_party_rights,
            public_data=c.public_data,
            regulated_domains=list(c.regulated_domains),
            legal_prohibition=legal_prohibition,
        )
    )


# --- product codes: <exchange>-<year>-<sequence><check>, ISO/IEC 7064 MOD 37,36 ----------------

_ALPHANUMERIC: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def code_check_character(body: str) -> str:
    """ISO/IEC 7064 MOD 37,36 (hybrid) check character over the letters and digits of ``body``."""
    modulus = 36
    product = modulus
    for char in body:
        if char == "-":
            continue
        total = (product + _ALPHANUMERIC.index(char)) % modulus or modulus
        product = (total * 2) % (modulus + 1)
    return _ALPHANUMERIC[(modulus + 1 - product) % modulus]


def product_code(exchange: str, year: int, sequence: int) -> str:
    body = f"{exchange}-{year}-{sequence:06d}"
    return f"{body}{code_check_character(body)}"


def product_code_is_valid(code: str) -> bool:
    return (
        len(code) > 1
        and all(c in _ALPHANUMERIC or c == "-" for c in code)
        and code_check_character(code[:-1]) == code[-1]
    )
