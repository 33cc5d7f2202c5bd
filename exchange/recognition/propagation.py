"""The peer's side of propagation: pull each trusted peer's feed, forever, and apply it.

Runs as a task of every API process (``DATAEX_PEER_POLL_MS``, 0 turns it off). Replicas may pull
the same peer at once: each item is applied under the peer row's lock and only past its cursor,
so it is applied once. HTTP is the standard library's, run in a thread: a poll a second per peer
needs no client library of its own.
"""

from __future__ import annotations

import asyncio
import http.client
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec

from exchange.platform.audit import Actor
from exchange.platform.logging import get_logger
from exchange.platform.validation import decode_json
from exchange.recognition.service import RecognitionService

log = get_logger(__name__)
FETCH_TIMEOUT = 5.0


class FetchError(RuntimeError):
    """A peer's URL did not answer with JSON."""


def get_json(url: str, timeout: float = FETCH_TIMEOUT) -> Any:
    """GET ``url`` (http or https only) and decode its JSON body."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise FetchError(f"only http(s) URLs are fetched, not {url!r}")
    request = urllib.request.Request(url, headers={"accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return decode_json(response.read())  # invalid UTF-8 too is a DecodeError
    # HTTPException: what http.client refuses (a URL with control characters) or cannot read
    except (OSError, http.client.HTTPException, msgspec.DecodeError) as error:
        raise FetchError(f"GET {url}: {error}") from error


async def fetch_json(url: str) -> Any:
    return await asyncio.to_thread(get_json, url)


async def pull_all(service: RecognitionService, actor: Actor) -> int:
    """One round: every trusted peer's feed until it has nothing new. Returns items applied."""
    total = 0
    for peer in await service.peers():
        if not peer.trusted:
            continue
        try:
            while (applied := await service.pull(peer.code, fetch_json, actor)) > 0:
                total += applied
        except Exception as error:  # noqa: BLE001 - one peer's outage must not stop the others
            log.warning(
                "peer_pull_failed", peer=peer.code, error=f"{type(error).__name__}: {error}"
            )
    return total


async def run_puller(service: RecognitionService, interval: float) -> None:
    """Pull every peer every ``interval`` seconds until cancelled."""
    actor = Actor(label="system:peer-feed")
    while True:
        try:
            await pull_all(service, actor)
        except (asyncpg.PostgresError, OSError) as error:
            log.warning("peer_pull_round_failed", error=str(error))
        await asyncio.sleep(interval)
