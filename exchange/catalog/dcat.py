"""The published resource list (数据资源清单) as DCAT 3 / DCAT-AP 3 JSON-LD, and Turtle.

A `dcat:Catalog` published by the exchange; a `dcat:Dataset` per listed product with its title
in Chinese (and English), description, keywords, theme (the sector as a `skos:Concept` in the
exchange's sector scheme), publisher (the seller, with its USCC), issued and modified times; a
`dcat:Distribution` per delivery mode, each with `odrl:hasPolicy`: one ODRL policy whose
permissions are the product's plans (permitted purposes, territory, maximum term) and which
permits or prohibits redistribution as each plan says. The context is inline, so parsing needs
no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from exchange.listings.schemas import ProductMetadata

CONTEXT: dict[str, Any] = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "odrl": "http://www.w3.org/ns/odrl/2/",
    "skos": "http://www.w3.org/2004/02/skos/core#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "adms": "http://www.w3.org/ns/adms#",
    "hydra": "http://www.w3.org/ns/hydra/core#",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    "dataex": "urn:dataex:vocab:",
}

SECTOR_LABELS = {
    "MFG": ("工业制造", "Manufacturing"),
    "AGRI": ("现代农业", "Modern agriculture"),
    "TRADE": ("商贸流通", "Commerce and trade"),
    "TRANSPORT": ("交通运输", "Transport"),
    "FINANCE": ("金融服务", "Financial services"),
    "SCI_TECH": ("科技创新", "Science and technology"),
    "CULTURE_TOURISM": ("文化旅游", "Culture and tourism"),
    "HEALTH": ("医疗健康", "Health care"),
    "EMERGENCY": ("应急管理", "Emergency management"),
    "METEOROLOGY": ("气象服务", "Meteorology"),
    "URBAN_GOV": ("城市治理", "Urban governance"),
    "GREEN_LOWCARBON": ("绿色低碳", "Green and low-carbon"),
    "OTHER": ("其他", "Other"),
}
DELIVERY_LABELS = {"file": "文件交付", "api": "接口交付", "sandbox": "沙箱交付"}


@dataclass(frozen=True, slots=True)
class PageLinks:
    """The URLs of a page of the catalog: this one, the first, and the next (None on the last)."""

    current: str
    first: str
    next: str | None


def _lang(text: str, language: str) -> dict[str, str]:
    return {"@value": text, "@language": language}


def _is_han(char: str) -> bool:
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF  # CJK Unified Ideographs
        or 0x3400 <= code <= 0x4DBF  # Extension A
        or 0xF900 <= code <= 0xFAFF  # Compatibility Ideographs
        or 0x20000 <= code <= 0x3134F  # Extensions B to H, and the supplement
    )


def keyword_language(keyword: str) -> str | None:
    """The language a seller's tag is in, by its own characters (tags carry no language):
    any Chinese character makes it ``zh`` (医疗, 5G基站), Latin letters without one ``en``
    (weather, AI), and a tag of neither (2025, ISO-3166 digits) is in no language."""
    if any(_is_han(char) for char in keyword):
        return "zh"
    if any("a" <= char.lower() <= "z" for char in keyword):
        return "en"
    return None


def keyword(text: str) -> dict[str, str] | str:
    """A `dcat:keyword` tagged with its own language (a plain literal when it has none)."""
    language = keyword_language(text)
    return text if language is None else _lang(text, language)


def _datetime(value: str) -> dict[str, str]:
    return {"@value": value, "@type": "xsd:dateTime"}


def sector_concept(base: str, sector: str) -> dict[str, Any]:
    zh, en = SECTOR_LABELS[sector]
    return {
        "@id": f"{base}/v1/catalog/sectors/{sector}",
        "@type": "skos:Concept",
        "skos:prefLabel": [_lang(zh, "zh"), _lang(en, "en")],
        "skos:inScheme": {"@id": f"{base}/v1/catalog/sectors"},
        "skos:notation": sector,
    }


def _policy(base: str, product_code: str, mode: str, metadata: ProductMetadata) -> dict[str, Any]:
    permissions: list[dict[str, Any]] = []
    prohibitions: list[dict[str, Any]] = []
    for plan in metadata.plans:
        constraints = [
            {"odrl:leftOperand": {"@id": "odrl:purpose"}, "odrl:operator": {"@id": "odrl:isAnyOf"},
             "odrl:rightOperand": list(plan.purposes)},
            {"odrl:leftOperand": {"@id": "odrl:spatial"}, "odrl:operator": {"@id": "odrl:isAnyOf"},
             "odrl:rightOperand": list(plan.territory)},
            {"odrl:leftOperand": {"@id": "odrl:elapsedTime"}, "odrl:operator": {"@id": "odrl:lteq"},
             "odrl:rightOperand": {"@value": f"P{plan.max_term_days}D",
                                   "@type": "xsd:duration"}},
        ]  # fmt: skip
        permissions.append(
            {"@id": f"{base}/v1/catalog/{product_code}/plans/{plan.id}/use",
             "dct:title": plan.name, "odrl:action": {"@id": "odrl:use"},
             "odrl:constraint": constraints,
             "dataex:priceFen": plan.price_fen, "dataex:pricing": plan.pricing}
        )  # fmt: skip
        rule = {"@id": f"{base}/v1/catalog/{product_code}/plans/{plan.id}/distribute",
                "odrl:action": {"@id": "odrl:distribute"}}  # fmt: skip
        (permissions if plan.redistribution else prohibitions).append(rule)
    policy: dict[str, Any] = {
        "@id": f"{base}/v1/catalog/{product_code}/policy/{mode}",
        "@type": ["odrl:Policy", "odrl:Offer"],
        "odrl:uid": {"@id": f"{base}/v1/catalog/{product_code}/policy/{mode}"},
        "odrl:permission": permissions,
    }
    if prohibitions:
        policy["odrl:prohibition"] = prohibitions
    return policy


def dataset(
    base: str, row: Any, metadata: ProductMetadata, seller_uscc: str | None
) -> dict[str, Any]:
    """One listed product as a `dcat:Dataset` (row: its catalog row)."""
    code = row["product_code"]
    titles = [_lang(metadata.name_zh, "zh")]
    if metadata.name_en:
        titles.append(_lang(metadata.name_en, "en"))
    publisher: dict[str, Any] = {
        "@id": f"{base}/v1/organisations/{row['seller_org_id']}",
        "@type": "foaf:Agent",
        "foaf:name": row["seller_name"],
    }
    if seller_uscc:
        publisher["dct:identifier"] = seller_uscc
    keywords = [keyword(tag) for tag in metadata.tags]
    return {
        "@id": f"{base}/v1/catalog/{code}",
        "@type": "dcat:Dataset",
        "dct:identifier": code,
        "dct:title": titles,
        "dct:description": _lang(metadata.summary, "zh"),
        "dcat:keyword": keywords,
        "dcat:theme": sector_concept(base, metadata.sector),
        "dct:publisher": publisher,
        "dct:issued": _datetime(row["listed_at"].isoformat()),
        "dct:modified": _datetime(row["updated_at"].isoformat()),
        "dataex:productType": metadata.product_type,
        "dataex:dataLevel": metadata.classification.data_level,
        "dataex:revision": row["revision"],
        "dataex:recognisedFrom": row["recognised_from"],
        "dcat:distribution": [
            {
                "@id": f"{base}/v1/catalog/{code}/distributions/{mode}",
                "@type": "dcat:Distribution",
                "dct:title": _lang(DELIVERY_LABELS[mode], "zh"),
                "dcat:accessURL": {
                    "@id": f"{base}/v1/products/{row['product_id']}/certificate",
                    "@type": "rdfs:Resource",
                },
                "odrl:hasPolicy": _policy(base, code, mode, metadata),
            }
            for mode in metadata.delivery
        ],
    }


def catalog(
    base: str, exchange_name: str, exchange_code: str, datasets: list[dict[str, Any]],
    page: PageLinks | None = None, modified: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The catalog; with ``page``, one page of it, and its `hydra:view` (Hydra's
    PartialCollectionView: its ``@id`` is this page, `hydra:first` the first page and
    `hydra:next` the next one, when there is one)."""
    document: dict[str, Any] = {
        "@context": CONTEXT,
        "@id": f"{base}/v1/catalog",
        "@type": "dcat:Catalog",
        "dct:title": [
            _lang(f"{exchange_name} 数据资源清单", "zh"),
            _lang(f"{exchange_name} data resource list", "en"),
        ],
        "dct:description": _lang(
            f"{exchange_name}({exchange_code})挂牌数据产品的公开目录,一地上架,全国互认。", "zh"
        ),
        "dct:publisher": {
            "@id": f"{base}/#exchange",
            "@type": "foaf:Agent",
            "foaf:name": exchange_name,
            "dct:identifier": exchange_code,
        },
        "dcat:themeTaxonomy": {
            "@id": f"{base}/v1/catalog/sectors",
            "@type": "skos:ConceptScheme",
            "dct:title": _lang("数据要素行业", "zh"),
        },
        "dcat:dataset": datasets,
    }
    if modified:
        document["dct:modified"] = _datetime(modified)
    if page is not None:
        view: dict[str, Any] = {
            "@id": page.current,
            "@type": "hydra:PartialCollectionView",
            "hydra:first": {"@id": page.first},
        }
        if page.next is not None:
            view["hydra:next"] = {"@id": page.next}
        document["hydra:view"] = view
    return document


def to_turtle(document: dict[str, Any]) -> str:
    """Turtle of a JSON-LD document (through rdflib)."""
    from rdflib import Graph

    graph = Graph()
    graph.parse(data=msgspec.json.encode(document), format="json-ld")
    for prefix, uri in CONTEXT.items():
        graph.bind(prefix, uri)
    return str(graph.serialize(format="turtle"))
