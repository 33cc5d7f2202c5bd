"""The HTTP platform without a server: secrets never reach the logs; the document names types."""

from typing import Any


def test_redaction_masks_secret_keys_and_token_shaped_values():
    from exchange.platform.logging import redact_secrets

    event = redact_secrets(
        None,
        "info",
        {
            "event": "x",
            "password": "p",
            "authorization": "Bearer abc",
            "token_id": "keep-me",
            "note": "got dxt_0123abcd_SECRETsecret in a message",
        },
    )
    assert event["password"] == "[redacted]"
    assert event["authorization"] == "[redacted]"
    assert event["token_id"] == "keep-me"
    assert "SECRETsecret" not in event["note"]


def test_redaction_masks_the_passwords_of_urls():
    from exchange.platform.logging import redact_secrets

    event = redact_secrets(
        None,
        "error",
        {
            "event": "x",
            "url": "nats://dataex:s3cret-_x@127.0.0.1:4222",
            "error": "cannot reach postgresql://postgres:p%40ss@/dataex?host=/tmp/s (refused)",
            "public": "http://127.0.0.1:8000/v1",
        },
    )
    assert event["url"] == "nats://dataex:[redacted]@127.0.0.1:4222"
    assert (
        event["error"]
        == "cannot reach postgresql://postgres:[redacted]@/dataex?host=/tmp/s (refused)"
    )
    assert event["public"] == "http://127.0.0.1:8000/v1"


def test_schema_components_are_named_by_their_titles_and_a_clash_is_refused():
    import pytest

    from exchange.platform.http import SchemaNameClash, name_components

    def document(second_title: str) -> dict[str, Any]:
        return {
            "paths": {"/x": {"get": {"responses": {"200": {"content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/a_b_Product"}}}}}}}},
            "components": {"schemas": {
                "a_b_Product": {"title": "Product", "type": "object", "properties": {
                    "attributes": {"$ref": "#/components/schemas/c_d_Product"}}},
                "c_d_Product": {"title": second_title, "type": "object"},
            }},
        }  # fmt: skip

    named = name_components(document("ProductAttributes"))
    assert set(named["components"]["schemas"]) == {"Product", "ProductAttributes"}
    product = named["components"]["schemas"]["Product"]
    assert product["properties"]["attributes"] == {"$ref": "#/components/schemas/ProductAttributes"}
    content = named["paths"]["/x"]["get"]["responses"]["200"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Product"}
    # Two types titled alike: a generator would make one class of them and drop the other.
    with pytest.raises(SchemaNameClash, match="Product: a_b_Product, c_d_Product"):
        name_components(document("Product"))


def test_the_app_documents_every_type_under_a_name_of_its_own():
    from exchange.app import create_app
    from exchange.platform.settings import Settings

    schemas = create_app(Settings()).openapi_schema.to_schema()["components"]["schemas"]
    assert all(schema.get("title", key) == key for key, schema in schemas.items())
    assert {"Product", "ProductAttributes", "Order", "OrderAttributes"} <= set(schemas)
