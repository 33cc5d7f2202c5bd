"""``dataex peers add|list|remove``: the operator's side of trusting peer exchanges."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # imported where the commands run: `dataex --help` builds this parser
    import asyncpg

    from exchange.platform.audit import Actor
    from exchange.platform.clock import Clock
    from exchange.platform.settings import Settings
    from exchange.platform.signing import KeyRing
    from exchange.recognition.schemas import Peer
    from exchange.recognition.service import RecognitionService

    ServiceFactory = Callable[[asyncpg.Pool, Clock, Settings, KeyRing], RecognitionService]


def add_arguments(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    peers = commands.add_parser(
        "peers",
        help="peer exchanges this one trusts (recognition: 一地上架,全国互认)",
        description="Trust, list and distrust peer exchanges. A peer's JWKS is pinned from a"
        " file obtained out of band; its signed identity document must verify with it.",
    )
    tasks = peers.add_subparsers(dest="peers_command", metavar="TASK", required=True)
    add = tasks.add_parser("add", help="trust a peer: its code, base URL and pinned JWKS file")
    add.add_argument("code", help="the peer's exchange code, e.g. SHDX")
    add.add_argument("url", help="the peer's base URL, e.g. https://api.shdx.example")
    add.add_argument("--jwks", required=True, help="the peer's JWKS (a JSON file, - for stdin)")
    add.add_argument(
        "--identity",
        help="a file holding the peer's signed identity document (default: fetched from the URL)",
    )
    tasks.add_parser("list", help="the peers, their keys, feed cursors and last errors")
    remove = tasks.add_parser("remove", help="stop trusting a peer; its products are hidden")
    remove.add_argument("code")


def _read(name: str) -> str:
    return sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")


def _print(peer: Peer, out: TextIO) -> None:
    state = "trusted" if peer.trusted else f"removed {peer.removed_at:%Y-%m-%d %H:%M}"
    print(f"{peer.code}\t{peer.name}\t{state}\t{peer.feed_url}\tcursor {peer.cursor}", file=out)
    print(f"\tkeys: {', '.join(peer.kids)}", file=out)
    if peer.last_error:
        print(f"\tlast error: {peer.last_error}", file=out)


async def run(
    settings: Settings,
    args: argparse.Namespace,
    build: ServiceFactory,
    out: TextIO = sys.stdout,
) -> int:
    """Exit 0 on success, 1 when the peer is refused (the reason printed), 2 for bad input.
    ``build`` is the composition root's `exchange.wiring.recognition`."""
    from exchange.platform.audit import Actor
    from exchange.platform.clock import SystemClock
    from exchange.platform.db import create_pool
    from exchange.platform.errors import DataexError
    from exchange.platform.signing import KeyRing, load_master_key

    assert settings.database_url
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    service = build(pool, SystemClock(), settings, KeyRing(load_master_key(settings.state_dir)))
    actor = Actor.cli(f"peers {args.peers_command}")
    try:
        if args.peers_command == "list":
            for peer in await service.peers():
                _print(peer, out)
            return 0
        if args.peers_command == "remove":
            _print(await service.remove_peer(actor, args.code), out)
            return 0
        return await _add(service, actor, args, out)
    except DataexError as error:
        print(f"dataex: {error.code}: {error.detail}", file=sys.stderr)
        return 1
    finally:
        await pool.close()


async def _add(
    service: RecognitionService, actor: Actor, args: argparse.Namespace, out: TextIO
) -> int:
    import msgspec

    from exchange.recognition.propagation import FetchError, fetch_json
    from exchange.recognition.schemas import Jwks, PeerCreate
    from exchange.recognition.service import IDENTITY_PATH

    try:
        data = msgspec.convert(
            {"code": args.code, "base_url": args.url,
             "jwks": msgspec.json.decode(_read(args.jwks), type=Jwks)},
            PeerCreate,
        )  # fmt: skip
        identity = (
            _read(args.identity).strip()
            if args.identity
            else str((await fetch_json(args.url.rstrip("/") + IDENTITY_PATH))["jws"])
        )
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, FetchError, KeyError,
            TypeError) as error:  # fmt: skip
        print(f"dataex: {error}", file=sys.stderr)
        return 2
    _print(await service.add_peer(actor, data, identity, fetch_json), out)
    return 0
