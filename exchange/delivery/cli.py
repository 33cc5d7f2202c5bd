"""``dataex grants list|show|suspend|resume|revoke``: the operator's view of delivery grants."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # imported where the commands run: `dataex --help` builds this parser
    import asyncpg

    from exchange.delivery.schemas import Grant
    from exchange.delivery.service import GrantService
    from exchange.platform.audit import Actor
    from exchange.platform.auth import Principal
    from exchange.platform.clock import Clock
    from exchange.platform.settings import Settings
    from exchange.platform.signing import KeyRing

    ServiceFactory = Callable[[asyncpg.Pool, Clock, Settings, KeyRing], GrantService]


def add_arguments(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    grants = commands.add_parser(
        "grants",
        help="delivery grants (可控可计量): list, show, suspend, resume, revoke",
        description="Staff's view of delivery grants: what each buyer may receive, its quotas"
        " and state. Suspending takes effect at every gateway within a second.",
    )
    tasks = grants.add_subparsers(dest="grants_command", metavar="TASK", required=True)
    listing = tasks.add_parser("list", help="grants, newest first")
    listing.add_argument("--state", choices=["pending", "active", "suspended", "exhausted",
                                             "expired", "revoked"])  # fmt: skip
    listing.add_argument("--product", help="a product code")
    listing.add_argument("--limit", type=int, default=50)
    show = tasks.add_parser("show", help="one grant with its quotas and usage")
    show.add_argument("grant_id")
    for name, text in (("suspend", "suspend a grant (the exchange's own cause)"),
                       ("revoke", "end a grant for good")):  # fmt: skip
        task = tasks.add_parser(name, help=text)
        task.add_argument("grant_id")
        task.add_argument("--reason", required=True)
    resume = tasks.add_parser("resume", help="lift the exchange's suspension of a grant")
    resume.add_argument("grant_id")


def _print(grant: Grant, out: TextIO) -> None:
    causes = f" ({', '.join(grant.suspended_by)})" if grant.suspended_by else ""
    print(
        f"{grant.id}\t{grant.state}{causes}\t{grant.mode}\t{grant.product_code}"
        f"\tbuyer {grant.buyer_org_id}\tuntil {grant.valid_until:%Y-%m-%d %H:%M}",
        file=out,
    )
    for q in grant.quotas:
        print(f"\t{q.dimension}: used {q.used} + leased {q.leased} of {q.limit}", file=out)


async def run(
    settings: Settings, args: argparse.Namespace, build: ServiceFactory, out: TextIO = sys.stdout
) -> int:
    """Exit 0 on success, 1 when refused (the reason printed). ``build`` is the composition
    root's `exchange.wiring.grants`."""
    import uuid

    from exchange.platform.audit import Actor
    from exchange.platform.auth import Principal
    from exchange.platform.clock import SystemClock
    from exchange.platform.db import create_pool
    from exchange.platform.errors import DataexError
    from exchange.platform.signing import KeyRing, load_master_key

    assert settings.database_url
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    service = build(pool, SystemClock(), settings, KeyRing(load_master_key(settings.state_dir)))
    actor = Actor.cli(f"grants {args.grants_command}")
    staff = Principal(org_id=uuid.UUID(int=0), org_name="cli", token_id=uuid.UUID(int=0),
                      roles=frozenset({"admin", "reviewer"}), is_operator=True)  # fmt: skip
    try:
        await _task(service, staff, actor, args, out)
    except (DataexError, ValueError) as error:
        print(f"dataex: {getattr(error, 'code', 'invalid')}: {error}", file=sys.stderr)
        return 1
    else:
        return 0
    finally:
        await pool.close()


async def _task(
    service: GrantService, staff: Principal, actor: Actor, args: argparse.Namespace, out: TextIO
) -> None:
    import uuid

    command = args.grants_command
    if command == "list":
        for grant in await service.list_for(staff, state=args.state, product_code=args.product,
                                            after=None, limit=args.limit):  # fmt: skip
            _print(grant, out)
        return
    grant_id = uuid.UUID(args.grant_id)
    if command == "show":
        _print(await service.get(staff, grant_id), out)
        usage = await service.usage(staff, grant_id)
        print(f"\tusage: {usage.records} records, {usage.totals}, {usage.periods} periods"
              f" charged {usage.charged_fen} fen", file=out)  # fmt: skip
    elif command == "suspend":
        _print(await service.suspend(actor, grant_id, args.reason), out)
    elif command == "resume":
        _print(await service.resume(actor, grant_id), out)
    else:
        _print(await service.revoke(actor, grant_id, args.reason), out)
