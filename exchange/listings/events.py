"""The listing events other systems (and peer exchanges) consume, as types and JSON Schema."""

from __future__ import annotations

from typing import Literal

import msgspec

from contracts.outbox import CloudEvent

LISTING_EVENTS = ("published", "suspended", "delisted")


class ListingEventData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    product_id: str
    product_code: str
    exchange: str
    revision: int | None
    revision_digest: str | None
    seller_name: str | None = None
    seller_uscc: str | None = None
    reason: str | None = None


class ListingEvent(CloudEvent, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``dx.listing.published`` / ``dx.listing.suspended`` / ``dx.listing.delisted``."""

    type: Literal["dx.listing.published", "dx.listing.suspended", "dx.listing.delisted"]
    data: ListingEventData


def json_schema() -> dict[str, object]:
    schema = msgspec.json.schema(ListingEvent)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "urn:dataex:schema:dx.listing"
    return schema
