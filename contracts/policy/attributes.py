"""The evaluation document: every attribute a rule may test, as msgspec types.

Unknown fields and wrong types are errors naming the path. Every risk-relevant attribute is
required: a missing attribute must never make a product look safer than it is.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

DataLevel = Literal["core", "important", "general"]
PIState = Literal["identified", "deidentified", "anonymised"]
SourceKind = Literal[
    "self_generated", "collected", "purchased", "crawled", "public_data", "unknown"
]
PublicChannel = Literal["open_data", "authorised_operation", "none"]
RegulatedDomain = Literal[
    "automotive", "health", "finance", "civil_aviation", "geographic", "meteorological"
]
ContentFlag = Literal[
    "state_secrets",
    "subversion_separatism",
    "national_honour",
    "ethnic_hatred",
    "cult_superstition",
    "rumours",
    "obscenity",
    "gambling",
    "violence_terror",
    "weapons_hazardous",
    "drugs",
    "illegal_fundraising",
    "defamation_insult",
    "privacy_exposure",
]
Exemption = Literal["contract_with_individual", "cross_border_hr", "emergency", "re_export"]
Country = Annotated[str, Meta(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]
Count = Annotated[int, Meta(ge=0, le=10_000_000_000)]


class PersonalInfo(Struct, forbid_unknown_fields=True, frozen=True):
    present: bool
    state: PIState
    sensitive: bool
    minors_under_14: bool
    subject_count: Count
    separate_consent_for_supply: bool
    guardian_consent: bool


class Source(Struct, forbid_unknown_fields=True, frozen=True):
    kind: SourceKind
    legality_proof: bool
    upstream_forbids_resale: bool


class ThirdPartyRights(Struct, forbid_unknown_fields=True, frozen=True):
    trade_secrets: bool
    authorised: bool


class PublicData(Struct, forbid_unknown_fields=True, frozen=True):
    involved: bool
    channel: PublicChannel


class Product(Struct, forbid_unknown_fields=True, frozen=True):
    # The API's documents name it apart from the listing room's Product (`SchemaNameClash`).
    __schema_name__ = "ProductAttributes"

    data_level: DataLevel
    personal_info: PersonalInfo
    content_flags: list[ContentFlag]
    source: Source
    third_party_rights: ThirdPartyRights
    public_data: PublicData
    regulated_domains: list[RegulatedDomain]
    legal_prohibition: bool
    general_grade: Annotated[int, Meta(ge=1, le=4)] | None = None


class Order(Struct, forbid_unknown_fields=True, frozen=True):
    # The API's documents name it apart from the orders room's Order (`SchemaNameClash`).
    __schema_name__ = "OrderAttributes"

    buyer_country: Country
    delivery_country: Country
    redistribution: bool
    pi_subject_count: Count


class Exporter(Struct, forbid_unknown_fields=True, frozen=True):
    ciio: bool
    ytd_pi_subjects: Count
    ytd_sensitive_pi_subjects: Count
    exemption: Exemption | None
    ftz_exempt: bool


class EvaluationDocument(Struct, forbid_unknown_fields=True, frozen=True):
    """A listing (``product`` only) or an order (``product``, ``order`` and ``exporter``)."""

    product: Product
    order: Order | None = None
    exporter: Exporter | None = None

    def __post_init__(self) -> None:
        if (self.order is None) != (self.exporter is None):
            raise ValueError(
                "order and exporter come together: an order evaluation needs the exporter's"
                " counts, a listing evaluation has neither"
            )


def decode_document(raw: bytes | str) -> EvaluationDocument:
    """JSON to a validated document; `msgspec.ValidationError` names the offending path."""
    return msgspec.json.decode(raw, type=EvaluationDocument)


# --- the attribute schema, derived from the types above, for validating rule files ---------

ValueKind = Literal["bool", "int", "str", "list"]


@dataclass(frozen=True, slots=True)
class Attribute:
    """One testable attribute: its kind, the allowed values if enumerated, and its scope."""

    path: str
    kind: ValueKind
    allowed: frozenset[str] | None
    scope: Literal["product", "order"]


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    optional = False
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    args = typing.get_args(annotation)
    if type(None) in args:
        optional = True
        rest = [a for a in args if a is not type(None)]
        annotation = rest[0]
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
    return annotation, optional


def _attribute(path: str, annotation: Any, scope: Literal["product", "order"]) -> Attribute:
    base, _ = _unwrap(annotation)
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        return Attribute(path, "list", frozenset(typing.get_args(item)) or None, scope)
    if typing.get_origin(base) is Literal:
        return Attribute(path, "str", frozenset(typing.get_args(base)), scope)
    kind: ValueKind = {bool: "bool", int: "int", str: "str"}[base]  # type: ignore[assignment]
    return Attribute(path, kind, None, scope)


def _walk(struct: type[Struct], prefix: str, scope: Literal["product", "order"]) -> list[Attribute]:
    hints = typing.get_type_hints(struct, include_extras=True)
    found: list[Attribute] = []
    for field in msgspec.structs.fields(struct):
        base, _ = _unwrap(hints[field.name])
        path = f"{prefix}.{field.name}"
        if isinstance(base, type) and issubclass(base, Struct):
            found.extend(_walk(base, path, scope))
        else:
            found.append(_attribute(path, hints[field.name], scope))
    return found


def _derived() -> list[Attribute]:
    routes = frozenset(
        {"none", "exempt", "standard_contract_or_certification", "security_assessment"}
    )
    return [Attribute("cross_border.route", "str", routes, "order")]


ATTRIBUTES: dict[str, Attribute] = {
    a.path: a
    for a in [
        *_walk(Product, "product", "product"),
        *_walk(Order, "order", "order"),
        *_walk(Exporter, "exporter", "order"),
        *_derived(),
    ]
}
