"""The published resource list's JSON-LD (DCAT 3 / DCAT-AP 3, ODRL, Hydra) as types, for the
API's document: `exchange.catalog.dcat` writes it, these describe it.

Each node is a JSON object keyed by compact IRIs (``dct:title``) and JSON-LD keywords (``@id``),
in the inline ``@context``. The types name what the catalogue writes; a JSON-LD reader may meet
more (it is RDF), and a client should keep what it does not know.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct, field


class LangString(Struct, frozen=True):
    """A literal in a language (``rdf:langString``)."""

    value: str = field(name="@value")
    language: str = field(name="@language")


class TypedLiteral(Struct, frozen=True):
    """A literal of a datatype (``xsd:dateTime``, ``xsd:duration``)."""

    value: str = field(name="@value")
    type: str = field(name="@type")


class NodeRef(Struct, frozen=True):
    """A reference to a node by its IRI."""

    id: str = field(name="@id")


class TypedNodeRef(Struct, frozen=True):
    id: str = field(name="@id")
    type: str = field(name="@type")


class FoafAgent(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A publisher: the exchange (its code) or a seller (its USCC, when it has one)."""

    id: str = field(name="@id")
    type: Literal["foaf:Agent"] = field(name="@type")
    name: str = field(name="foaf:name")
    identifier: str | None = field(name="dct:identifier", default=None)


class SkosConcept(Struct, frozen=True, kw_only=True):
    """A sector of the exchange's scheme, the theme of a dataset."""

    id: str = field(name="@id")
    type: Literal["skos:Concept"] = field(name="@type")
    pref_label: list[LangString] = field(name="skos:prefLabel")
    in_scheme: NodeRef = field(name="skos:inScheme")
    notation: str = field(name="skos:notation")


class SkosConceptScheme(Struct, frozen=True, kw_only=True):
    id: str = field(name="@id")
    type: Literal["skos:ConceptScheme"] = field(name="@type")
    title: LangString | list[LangString] = field(name="dct:title")


class OdrlConstraint(Struct, frozen=True, kw_only=True):
    """A plan's limit: permitted purposes or territory (a list), or maximum term (a duration)."""

    left_operand: NodeRef = field(name="odrl:leftOperand")
    operator: NodeRef = field(name="odrl:operator")
    right_operand: list[str] | TypedLiteral = field(name="odrl:rightOperand")


class OdrlRule(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A permission (use under a plan, or redistribution) or a prohibition (redistribution)."""

    id: str = field(name="@id")
    action: NodeRef = field(name="odrl:action")
    title: str | LangString | list[LangString] | None = field(name="dct:title", default=None)
    constraint: list[OdrlConstraint] | None = field(name="odrl:constraint", default=None)
    price_fen: int | None = field(name="dataex:priceFen", default=None)
    pricing: str | None = field(name="dataex:pricing", default=None)


class OdrlPolicy(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a distribution's plans permit: purposes, territory and term, and redistribution."""

    id: str = field(name="@id")
    type: list[str] = field(name="@type")
    uid: NodeRef = field(name="odrl:uid")
    permission: list[OdrlRule] = field(name="odrl:permission")
    prohibition: list[OdrlRule] | None = field(name="odrl:prohibition", default=None)


class DcatDistribution(Struct, frozen=True, kw_only=True):
    """A delivery mode of a dataset."""

    id: str = field(name="@id")
    type: Literal["dcat:Distribution"] = field(name="@type")
    title: LangString | list[LangString] = field(name="dct:title")
    access_url: TypedNodeRef = field(name="dcat:accessURL")
    has_policy: OdrlPolicy = field(name="odrl:hasPolicy")


class DcatDataset(Struct, frozen=True, kw_only=True):
    """A listed product."""

    id: str = field(name="@id")
    type: Literal["dcat:Dataset"] = field(name="@type")
    identifier: str = field(name="dct:identifier")  # the product code
    title: list[LangString] = field(name="dct:title")
    description: LangString | list[LangString] = field(name="dct:description")
    keyword: list[LangString] = field(name="dcat:keyword")
    theme: SkosConcept = field(name="dcat:theme")
    publisher: FoafAgent = field(name="dct:publisher")
    issued: TypedLiteral = field(name="dct:issued")
    modified: TypedLiteral = field(name="dct:modified")
    product_type: str = field(name="dataex:productType")
    data_level: str = field(name="dataex:dataLevel")
    revision: int = field(name="dataex:revision")
    distribution: list[DcatDistribution] = field(name="dcat:distribution")
    # The code of the exchange a recognised product was listed at; null for a local one.
    recognised_from: str | None = field(name="dataex:recognisedFrom", default=None)


class HydraView(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Where this page sits in the paged list: ``hydra:next`` is the next page."""

    id: str = field(name="@id")
    type: Literal["hydra:PartialCollectionView"] = field(name="@type")
    next: NodeRef | None = field(name="hydra:next", default=None)


class DcatCatalog(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One page of the resource list (数据资源清单): the exchange's ``dcat:Catalog`` with its
    datasets, newest first. The ``@context`` is inline (prefix → IRI)."""

    context: dict[str, Any] = field(name="@context")
    id: str = field(name="@id")
    type: Literal["dcat:Catalog"] = field(name="@type")
    title: list[LangString] = field(name="dct:title")
    description: LangString | list[LangString] = field(name="dct:description")
    publisher: FoafAgent = field(name="dct:publisher")
    theme_taxonomy: SkosConceptScheme = field(name="dcat:themeTaxonomy")
    dataset: list[DcatDataset] = field(name="dcat:dataset")
    modified: TypedLiteral | None = field(name="dct:modified", default=None)
    view: HydraView | None = field(name="hydra:view", default=None)
