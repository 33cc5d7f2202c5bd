"""Catalog search in Chinese and English, filters, facets, keyset pages, and the DCAT-AP list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyshacl import validate
from rdflib import Graph, Literal, Namespace, URIRef

from tests.kit.api import bearer
from tests.kit.documents import metadata
from tests.kit.market import list_product

SHAPES = Path(__file__).parent / "data" / "dcat-ap-3.0.0" / "dcat-ap-SHACL.ttl"
HYDRA = Namespace("http://www.w3.org/ns/hydra/core#")
DCAT = Namespace("http://www.w3.org/ns/dcat#")


def plan(price, free=False, plan_id="std"):
    return [{"id": plan_id, "name": "标准版", "pricing": "subscription", "price_fen": price,
             "free": free, "purposes": ["research"], "territory": ["CN"], "max_term_days": 365,
             "redistribution": False, "acceptance_days": 7}]  # fmt: skip


DOCS = {
    "weather": metadata(),  # 城市气象观测数据 / City weather observations, METEOROLOGY
    "imaging": metadata(
        name_zh="医疗影像数据集", name_en="Medical imaging datasets", sector="HEALTH",
        summary="三甲医院脱敏医学影像。", tags=["医疗", "影像"], delivery=["sandbox"],
        manual__fields=[{"name": "dicom_id", "type": "string", "meaning": "影像编号"}],
        plans=plan(5_000_000),
    ),
    "port": metadata(
        name_zh="港口货运指数", name_en="Port freight index", sector="TRANSPORT",
        product_type="index", summary="沿海港口吞吐量指数,含港口气象影响因子。", tags=["港口"],
        delivery=["api"], plans=plan(200_000),
    ),
}  # fmt: skip
FARM = metadata(
    name_zh="农业气象预警服务", name_en="Agricultural weather alerts", sector="AGRI",
    product_type="service", summary="面向种植户的灾害性天气预警。", tags=["农业"],
    plans=plan(0, free=True),
)  # fmt: skip


@pytest.fixture
async def catalog(client, market):
    ids = {name: await list_product(client, market, doc)
           for name, doc in DOCS.items()}  # fmt: skip
    ids["farm"] = await list_product(client, market, FARM, seller=market["other"])
    return ids


async def search(client, **params):
    response = await client.get("/v1/products", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def names(page):
    return [item["name_zh"] for item in page["items"]]


async def test_two_character_chinese_words_and_english_words_find_products(client, catalog):
    assert set(names(await search(client, q="气象"))) == {"城市气象观测数据", "农业气象预警服务",
                                                        "港口货运指数"}  # fmt: skip
    assert names(await search(client, q="医疗")) == ["医疗影像数据集"]
    assert names(await search(client, q="城市气象")) == ["城市气象观测数据"]
    assert set(names(await search(client, q="weather"))) == {"城市气象观测数据", "农业气象预警服务"}
    assert names(await search(client, q="Dataset")) == ["医疗影像数据集"]  # plural folded
    assert names(await search(client, q="dicom")) == ["医疗影像数据集"]  # a field name
    assert names(await search(client, q="港口 index")) == ["港口货运指数"]
    assert names(await search(client, q="量子")) == []


async def test_relevance_puts_name_matches_first(client, catalog):
    page = await search(client, q="气象")
    assert page["sort"] == "relevance"
    assert names(page)[-1] == "港口货运指数"  # 气象 only in its summary


async def test_each_filter(client, catalog, market):
    assert names(await search(client, sector="HEALTH")) == ["医疗影像数据集"]
    assert set(names(await search(client, sector=["HEALTH", "AGRI"]))) == {
        "医疗影像数据集", "农业气象预警服务"}  # fmt: skip
    assert names(await search(client, product_type="index")) == ["港口货运指数"]
    assert names(await search(client, delivery="sandbox")) == ["医疗影像数据集"]
    assert len(names(await search(client, data_level="general"))) == 4
    assert names(await search(client, data_level="core")) == []
    assert set(names(await search(client, price_min_fen=200_000, price_max_fen=1_000_000))) == {
        "港口货运指数", "城市气象观测数据"}  # fmt: skip
    seller = (await search(client, q="预警"))["items"][0]["seller_org_id"]
    assert names(await search(client, seller=seller)) == ["农业气象预警服务"]
    assert names(await search(client, recognised_from="SZDE")) == []
    assert names(await search(client, q="气象", sector="METEOROLOGY")) == ["城市气象观测数据"]


async def test_sorts(client, catalog):
    assert names(await search(client, sort="price_asc")) == [
        "农业气象预警服务", "港口货运指数", "城市气象观测数据", "医疗影像数据集"]  # fmt: skip
    assert names(await search(client, sort="price_desc"))[0] == "医疗影像数据集"
    assert names(await search(client)) == ["农业气象预警服务", "港口货运指数", "医疗影像数据集",
                                            "城市气象观测数据"]  # newest first  # fmt: skip


async def test_facets_follow_the_query(client, catalog):
    everything = (await search(client))["facets"]
    assert everything == {
        "sector": {"AGRI": 1, "HEALTH": 1, "METEOROLOGY": 1, "TRANSPORT": 1},
        "product_type": {"dataset": 2, "index": 1, "service": 1},
    }
    assert (await search(client, q="气象"))["facets"] == {
        "sector": {"AGRI": 1, "METEOROLOGY": 1, "TRANSPORT": 1},
        "product_type": {"dataset": 1, "index": 1, "service": 1},
    }
    assert (await search(client, product_type="dataset"))["facets"]["sector"] == {
        "HEALTH": 1, "METEOROLOGY": 1}  # fmt: skip
    assert (await search(client, facets="false"))["facets"] is None


@pytest.mark.parametrize("sort", ["newest", "price_asc", "relevance"])
async def test_cursor_pages_have_no_duplicates_or_gaps_while_products_are_listed(
    client, catalog, market, sort
):
    params = {"limit": 1, "sort": sort} | ({"q": "气象"} if sort == "relevance" else {})
    expected = names(await search(client, **(params | {"limit": 50})))
    seen = []
    page = await search(client, **params)
    added = 0
    while True:
        seen += names(page)
        if not page["next_cursor"]:
            break
        if added < 2:  # a new product goes live between pages
            added += 1
            await list_product(client, market, metadata(name_zh=f"新增气象数据{added}"))
        page = await search(client, **(params | {"cursor": page["next_cursor"]}))
    assert len(seen) == len(set(seen))
    assert set(expected) <= set(seen)


async def test_suspended_products_leave_the_catalog_and_return(client, catalog, market):
    port = catalog["port"]
    suspended = await client.post(f"/v1/products/{port}/suspend", json={"reason": "核查"},
                                  headers=bearer(market["alice"]))  # fmt: skip
    assert suspended.status_code == 200, suspended.text
    assert "港口货运指数" not in names(await search(client))
    assert (await search(client))["facets"]["product_type"].get("index") is None
    await client.post(f"/v1/products/{port}/reinstate", json={"reason": "已核查"},
                      headers=bearer(market["alice"]))  # fmt: skip
    assert "港口货运指数" in names(await search(client))


@pytest.mark.parametrize(
    ("params", "name"),
    [({"sector": "SPACE"}, "sector"), ({"sort": "relevance"}, "sort"),
     ({"price_min_fen": 5, "price_max_fen": 1}, "price_min_fen"), ({"cursor": "xyz"}, "cursor"),
     ({"limit": 0}, "limit"), ({"q": "!!!"}, "q"), ({"price_min_fen": -1}, "price_min_fen"),
     ({"sort": "cheapest"}, "sort"), ({"seller": "nope"}, "seller")],
)  # fmt: skip
async def test_bad_parameters_are_400_naming_them(client, params, name):
    response = await client.get("/v1/products", params=params)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert name in [e["path"] for e in problem["errors"]], problem


async def test_a_cursor_for_another_sort_is_refused(client, catalog):
    page = await search(client, limit=1)
    response = await client.get("/v1/products",
                                params={"sort": "price_asc", "cursor": page["next_cursor"]})  # fmt: skip
    assert response.status_code == 400 and "sort=newest" in response.json()["detail"]


async def test_the_resource_list_is_valid_dcat_ap_3(client, catalog):
    response = await client.get("/v1/catalog")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/ld+json")
    data = Graph().parse(data=response.text, format="json-ld")
    shapes = Graph().parse(SHAPES, format="turtle")
    conforms, _graph, report = validate(data, shacl_graph=shapes, inference="none")
    assert conforms, report
    assert len(response.json()["dcat:dataset"]) == 4
    farm = next(d for d in response.json()["dcat:dataset"]
                if d["dct:title"][0]["@value"] == "农业气象预警服务")  # fmt: skip
    assert farm["dcat:theme"]["skos:notation"] == "AGRI"
    policy = farm["dcat:distribution"][0]["odrl:hasPolicy"]
    assert policy["odrl:prohibition"][0]["odrl:action"]["@id"] == "odrl:distribute"
    turtle = await client.get("/v1/catalog", headers={"Accept": "text/turtle"})
    assert turtle.headers["content-type"].startswith("text/turtle")
    assert len(Graph().parse(data=turtle.text, format="turtle")) == len(data)
    first = await client.get("/v1/catalog", params={"limit": 3})
    nxt = first.json()["hydra:view"]["hydra:next"]["@id"]
    rest = await client.get(nxt.replace("http://testserver.local", ""))
    assert len(rest.json()["dcat:dataset"]) == 1


async def test_each_keyword_is_tagged_with_its_own_language(client, market):
    """Issue 18: every keyword was tagged @zh, English ones too. Tags carry no language, so each
    is tagged by its own characters: Chinese → zh, Latin letters → en, neither → none."""
    tags = ["气象", "weather", "5G基站", "Open Data", "2025"]
    await list_product(client, market, metadata(tags=tags))
    document = (await client.get("/v1/catalog")).json()
    (dataset,) = document["dcat:dataset"]
    assert dataset["dcat:keyword"] == [
        {"@value": "气象", "@language": "zh"},
        {"@value": "weather", "@language": "en"},
        {"@value": "5G基站", "@language": "zh"},
        {"@value": "Open Data", "@language": "en"},
        "2025",
    ]
    # As RDF, in JSON-LD and in Turtle alike.
    for text, form in ((json.dumps(document), "json-ld"),
                       ((await client.get("/v1/catalog", headers={"Accept": "text/turtle"})).text,
                        "turtle")):  # fmt: skip
        graph = Graph().parse(data=text, format=form)
        keywords = list(graph.objects(None, DCAT.keyword))
        assert all(isinstance(o, Literal) for o in keywords)
        found = {(str(o), o.language) for o in keywords if isinstance(o, Literal)}
        assert found == {("气象", "zh"), ("weather", "en"), ("5G基站", "zh"),
                         ("Open Data", "en"), ("2025", None)}  # fmt: skip


async def test_hydra_view_is_the_page_itself_and_next_the_next_page(client, catalog):
    """Issue 18: hydra:view's @id was the next page's URL. Per Hydra, the view is the page
    served (its @id is this page's URL), hydra:next the next page, hydra:first the first."""
    base = "http://testserver.local"
    first = (await client.get("/v1/catalog", params={"limit": 3})).json()
    view = first["hydra:view"]
    assert view["@type"] == "hydra:PartialCollectionView"
    assert view["@id"] == f"{base}/v1/catalog?limit=3"
    assert view["hydra:first"]["@id"] == f"{base}/v1/catalog?limit=3"
    next_url = view["hydra:next"]["@id"]
    assert next_url != view["@id"] and "cursor=" in next_url
    second = (await client.get(next_url.removeprefix(base))).json()
    assert len(second["dcat:dataset"]) == 1
    assert second["hydra:view"]["@id"] == next_url  # the page served is the page linked
    assert second["hydra:view"]["hydra:first"]["@id"] == f"{base}/v1/catalog?limit=3"
    assert "hydra:next" not in second["hydra:view"]  # the last page
    whole = (await client.get("/v1/catalog")).json()
    assert whole["hydra:view"]["@id"] == f"{base}/v1/catalog?limit=100"
    assert "hydra:next" not in whole["hydra:view"]
    # In RDF: the catalog has the view; the view links to the next page.
    graph = Graph().parse(data=json.dumps(first), format="json-ld")
    assert set(graph.objects(URIRef(f"{base}/v1/catalog"), HYDRA.view)) == {URIRef(view["@id"])}
    assert set(graph.objects(URIRef(view["@id"]), HYDRA.next)) == {URIRef(next_url)}
