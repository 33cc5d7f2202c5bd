"""Trusting a peer again (issue 18): its feed is read to its end before anything of it shows.

The peer SHDX is simulated (its keys held by the test) and its feed handed to the service one
item per page, so the test sees this exchange between every two items: none of SHDX's products
may be listed here until the feed has been read to its end, and then only those SHDX lists.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
import pytest

from exchange import wiring
from exchange.listings.lifecycle import product_code
from exchange.listings.schemas import ProductMetadata
from exchange.platform.audit import Actor
from exchange.platform.canonical import sha256_digest
from exchange.recognition.schemas import FeedItem, PeerCreate
from exchange.recognition.verify import FeedUnavailable
from tests.kit.documents import metadata
from tests.kit.recognition import PEER, Peer

CODES = [product_code(PEER, 2026, n) for n in (1, 2, 3)]


async def test_trusted_again_nothing_shows_until_the_feed_is_read_to_its_end(
    market, pool, clock, settings
):
    peer = Peer(settings)
    service = wiring.recognition(pool, clock, settings, None)  # type: ignore[arg-type]
    actor = Actor(label="test")
    documents = {code: metadata(name_zh=f"城市数据{n}") for n, code in enumerate(CODES)}
    seq = 0

    def published(code: str) -> FeedItem:
        nonlocal seq
        seq += 1
        clock.advance(timedelta(seconds=5))
        document = documents[code]
        digest = sha256_digest(msgspec.convert(document, ProductMetadata))
        return FeedItem(
            seq=seq, event="published", product_code=code, at=clock.now(), revision=1,
            revision_digest=digest, certificate=peer.certificate(document, 1, clock.now(),
                                                                 code=code),
            metadata=document, credential=peer.credential(clock.now()),
        )  # fmt: skip

    def suspended(code: str) -> FeedItem:
        nonlocal seq
        seq += 1
        clock.advance(timedelta(seconds=5))
        return FeedItem(seq=seq, event="suspended", product_code=code, at=clock.now(),
                        reason="来源争议")  # fmt: skip

    seen: list[dict[str, tuple[str, str | None]]] = []  # this exchange at each fetch
    late: list[FeedItem] = []  # what the peer publishes once its feed was read to its end
    answers: int | None = None  # how many more fetches the peer answers (None: all)

    async def fetch(url: str) -> dict[str, str]:
        nonlocal answers
        if answers is not None:
            if answers == 0:
                raise OSError("connection refused")
            answers -= 1
        seen.append(await states())
        after = int(url.split("after=")[1].split("&", maxsplit=1)[0])
        if late and not [i for i in peer.items if i.seq > after]:
            peer.items += late
            late.clear()
            return peer.page(after, limit=0)
        return peer.page(after, limit=1)

    async def states() -> dict[str, tuple[str, str | None]]:
        rows = await pool.fetch(
            "SELECT product_code, state, suspended_by FROM products WHERE recognised_from = $1",
            PEER,
        )
        return {r["product_code"]: (r["state"], r["suspended_by"]) for r in rows}

    async def trust() -> Any:
        data = PeerCreate(code=PEER, base_url="http://127.0.0.1:9", jwks=peer.jwks)
        return await service.add_peer(actor, data, peer.identity(), fetch)

    # Trusted: SHDX's first and third products are recognised here.
    await trust()
    peer.items = [published(CODES[0]), published(CODES[2])]
    while await service.pull(PEER, fetch, actor):
        pass
    assert await states() == {CODES[0]: ("listed", None), CODES[2]: ("listed", None)}

    # Distrusted; meanwhile SHDX suspends the first, reinstates it, suspends it again, and
    # lists a second.
    await service.remove_peer(actor, PEER)
    peer.items += [suspended(CODES[0]), published(CODES[0]), suspended(CODES[0]),
                   published(CODES[1])]  # fmt: skip

    # Trusted again while SHDX's feed fails half-way: it stays distrusted, nothing shows.
    seen.clear()
    answers = 2
    with pytest.raises(FeedUnavailable):
        await trust()
    assert not (await service.peers())[0].trusted
    assert all(state != "listed" for view in seen for state, _ in view.values())
    assert all(state != "listed" for state, _ in (await states()).values())

    # Trusted again with the feed answering; once read to its end SHDX publishes one more
    # item (a suspension of the third), which is read too before the peer is trusted.
    answers = None
    late.append(suspended(CODES[2]))
    seen.clear()
    trusted = await trust()
    assert trusted.trusted and trusted.cursor == seq
    assert len(seen) > 4
    assert all(state != "listed" for view in seen for state, _ in view.values())
    assert await states() == {
        CODES[0]: ("suspended", "origin"),
        CODES[1]: ("listed", None),
        CODES[2]: ("suspended", "origin"),
    }
    restored = await pool.fetchval(
        "SELECT detail->'products_restored' FROM audit_log WHERE action = 'peer.trusted'"
        " ORDER BY id DESC LIMIT 1"
    )
    assert restored == 1
    assert (
        await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'peer.trust_deferred'")
        == 1
    )
