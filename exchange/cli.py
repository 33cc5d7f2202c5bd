"""``dataex``: run, serve, migrate and administer the exchange.

Only argparse is imported here at start; each command imports what it runs inside its function,
so `dataex --help` and the offline commands (policy evaluate and check, ledger verify-receipt and
verify --export, dispute verify-bundle) start without the web framework, the database and NATS
drivers or the logging set-up (tests/test_cli_imports.py keeps it so).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exchange.platform.settings import Settings

DESCRIPTION = """\
dataex: the backend of a data exchange (数据交易所).

Configuration comes from DATAEX_* environment variables (see README). With no
DATAEX_DATABASE_URL / DATAEX_NATS_URL, embedded PostgreSQL and NATS run under
the state folder (DATAEX_STATE_DIR, default ./.dataex).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dataex", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser(
        "up",
        help="run the whole exchange on this machine (API, outbox relay, settlement worker)",
        description="Start embedded servers where no URL is set, migrate, provision JetStream,"
        " print a bootstrap admin token on first start, then run every part until Ctrl-C/SIGTERM.",
    )
    serve = commands.add_parser(
        "serve",
        help="run one part in this process (for deployments that scale parts separately)",
        description="Run one part against DATAEX_DATABASE_URL and DATAEX_NATS_URL.",
    )
    serve.add_argument(
        "part", choices=["api", "relay", "settlement", "delivery", "gateway", "runner"]
    )
    commands.add_parser(
        "migrate",
        help="apply database migrations and provision JetStream streams, then exit",
        description="Idempotent; safe to run from several processes at once (advisory lock).",
    )
    policy = commands.add_parser(
        "policy",
        help="the negative and cautious lists: evaluate, check, publish, replay",
        description="Evaluate and check need no server; publish and replay use the database.",
    )
    policy_commands = policy.add_subparsers(dest="policy_command", metavar="TASK", required=True)
    evaluate = policy_commands.add_parser(
        "evaluate",
        help="print the decision for an evaluation document (exit 0 whatever it is, 2 if invalid)",
    )
    evaluate.add_argument("file", help="a JSON evaluation document, or - for standard input")
    evaluate.add_argument("--list", dest="list_file", help="a list file (default: newest bundled)")
    check = policy_commands.add_parser("check", help="validate a list file (exit 2 if invalid)")
    check.add_argument("file")
    publish = policy_commands.add_parser(
        "publish", help="publish a list version; it takes effect now or at --effective-from"
    )
    publish.add_argument("file")
    publish.add_argument("--effective-from", help="ISO 8601 instant with time zone")
    replay = policy_commands.add_parser(
        "replay",
        help="report which stored decisions of open listings and orders a list would change",
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="a published version, or one under schemas/policy")
    which.add_argument("--file", help="a candidate list file, not yet published")
    bench = commands.add_parser("bench", help="benchmarks (figures, not tests)")
    bench_commands = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    bench_policy = bench_commands.add_parser(
        "policy", help="policy evaluations per second on one core for a typical order"
    )
    bench_policy.add_argument("--seconds", type=float, default=3.0)
    bench_orders = bench_commands.add_parser(
        "orders",
        help="orders per second from HTTP request to executed contract (auto-accept), against a"
        " running exchange",
    )
    bench_orders.add_argument("--url", default="http://127.0.0.1:8000")
    bench_orders.add_argument("--admin-token", required=True)
    bench_orders.add_argument("--duration", type=float, default=20.0)
    bench_orders.add_argument("--concurrency", type=int, default=16)
    _trades_command(bench_commands)
    _settlement_commands(commands, bench_commands)
    _catalog_commands(commands, bench_commands)
    _console_command(bench_commands)
    _dispute_commands(commands)
    keys = commands.add_parser("keys", help="the exchange's signing keys")
    key_commands = keys.add_subparsers(dest="keys_command", metavar="TASK", required=True)
    key_commands.add_parser(
        "rotate",
        help="add a new current signing key; earlier keys stay in the JWKS so old signatures"
        " still verify",
    )
    admin = commands.add_parser("admin", help="operator tasks")
    admin_commands = admin.add_subparsers(dest="admin_command", metavar="TASK", required=True)
    admin_commands.add_parser(
        "bootstrap",
        help="issue a new admin token for the exchange operator (creating it if needed)",
        description="Prints the token once; only its hash is stored. Needs database access,"
        " which is what makes it the operator's recovery path.",
    )
    return parser


def _trades_command(bench_commands: Any) -> None:
    trades = bench_commands.add_parser(
        "trades",
        help="the whole exchange under load: HTTP orders to settled trades, with a table, a JSON"
        " file and a PNG chart",
        description="Starts a fresh exchange (embedded servers) unless --url names a running one;"
        " sets up sellers, products and funded buyers; drives orders; reports orders/s,"
        " executed/s, settled/s from the ledger, latencies, errors and peak RSS per process.",
    )
    trades.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    trades.add_argument("--concurrency", type=int, default=32, help="orders in flight (at most)")
    trades.add_argument(
        "--rate", type=float, default=None, help="open loop: orders per second (default: closed)"
    )
    trades.add_argument(
        "--warmup", type=float, default=10.0, help="seconds of the same load first, not counted"
    )
    trades.add_argument("--sellers", type=int, default=4, help="listed products, one per seller")
    trades.add_argument("--buyers", type=int, default=32)
    trades.add_argument(
        "--api-workers",
        type=int,
        default=1,
        help="API processes of the exchange it starts (one groups orders best on 2 cores)",
    )
    trades.add_argument("--pgbench", action="store_true", help="pgbench TPC-B 20 s first")
    trades.add_argument("--url", default=None, help="drive this running exchange instead")
    trades.add_argument("--admin-token", default=None, help="with --url (else one is issued)")
    trades.add_argument("--out", default=None, help="folder for the JSON and PNG (default .)")


def _catalog_commands(commands: Any, bench_commands: Any) -> None:
    seed = commands.add_parser(
        "seed",
        help="fill the database with realistic synthetic listed products (for benchmarks)",
        description="Chinese and English names across every sector, written with COPY.",
    )
    seed.add_argument("--products", type=int, required=True)
    catalog = commands.add_parser("catalog", help="the published resource list (DCAT)")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", metavar="TASK", required=True)
    catalog_commands.add_parser(
        "publish",
        help="write a dated, signed DCAT-AP JSON-LD snapshot of the whole list under the state"
        " folder and record it",
    )
    bench_catalog = bench_commands.add_parser(
        "catalog",
        help="search latency (p50/p95/p99) for a fixed query mix against a running exchange",
    )
    bench_catalog.add_argument("--url", default="http://127.0.0.1:8000")
    bench_catalog.add_argument("--requests", type=int, default=2000)
    bench_catalog.add_argument("--concurrency", type=int, default=4)


def _dispute_commands(commands: Any) -> None:
    dispute = commands.add_parser("dispute", help="disputes over trades: check an evidence bundle")
    dispute_commands = dispute.add_subparsers(dest="dispute_command", metavar="TASK", required=True)
    bundle = dispute_commands.add_parser(
        "verify-bundle",
        help="check a dispute's evidence bundle with only the exchange's JWKS",
        description="The manifest's signature, the signed tree head, and every item: its place,"
        " size, SHA-256 and the ledger entry registering it, included in the signed tree. Exit 0"
        " verified, 1 a problem (the first, named), 2 unreadable input.",
    )
    bundle.add_argument("file")
    bundle.add_argument(
        "--jwks", required=True, help="a JWKS file, or the exchange's /.well-known/jwks.json URL"
    )


def _console_command(bench_commands: Any) -> None:
    console = bench_commands.add_parser(
        "console",
        help="the staff console's queue and case pages with N open review cases: p50/p95/p99,"
        " client and server time, beside a static file and /health/live; EXPLAIN of the queue",
        description="Seeds --cases open review cases into a database of its own on the"
        " configured (or embedded) servers, starts `dataex serve api`, signs in as a reviewer"
        " and measures every page kind (unless --url names a running exchange, whose database"
        " it seeds only with --seed). Writes console-<stamp>.json under --out.",
    )
    console.add_argument("--cases", type=int, default=10_000, help="open review cases to seed")
    console.add_argument("--requests", type=int, default=1000, help="requests of each page kind")
    console.add_argument("--concurrency", type=int, default=1, help="requests at a time")
    console.add_argument("--api-workers", type=int, default=1, help="granian workers it starts")
    console.add_argument("--url", default=None, help="measure this running exchange instead")
    console.add_argument(
        "--seed", action="store_true", help="with --url: seed --cases into its database first"
    )
    console.add_argument("--out", default="ops/bench", help="folder for the JSON ('' for none)")


def _settlement_commands(commands: Any, bench_commands: Any) -> None:
    bench_settlement = bench_commands.add_parser(
        "settlement",
        help="settled trades per second with N executed trades waiting in JetStream, for one"
        " and more settlement worker processes, and pgbench TPC-B tps in the same run",
    )
    bench_settlement.add_argument("--trades", type=int, default=100_000)
    bench_settlement.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure"
    )
    bench_settlement.add_argument("--buyers", type=int, default=1000)
    bench_settlement.add_argument("--pgbench-seconds", type=int, default=20)
    bench_delivery = bench_commands.add_parser(
        "delivery",
        help="gateway calls/s and overhead beside direct calls, file MB/s beside a static"
        " server, token issue p99, suspension to denial; a table, a JSON file and a PNG chart",
    )
    bench_delivery.add_argument("--connections", type=int, default=32)
    bench_delivery.add_argument("--duration", type=float, default=20.0, help="seconds per load")
    bench_delivery.add_argument("--rate", type=float, default=500.0, help="open loop calls/s")
    bench_delivery.add_argument("--gateway-workers", type=int, nargs="+", default=[1, 2])
    bench_delivery.add_argument("--file-mb", type=float, default=256.0)
    bench_delivery.add_argument("--downloads", type=int, default=3, help="whole, in turn")
    bench_delivery.add_argument("--ranges", type=int, default=4, help="parallel ranges")
    bench_delivery.add_argument("--samples", type=int, default=1000, help="token issues")
    bench_delivery.add_argument("--suspensions", type=int, default=5)
    bench_delivery.add_argument("--out", default="ops/bench")
    bench_disputes = bench_commands.add_parser(
        "disputes",
        help="a dispute's evidence bundle: export through the API and offline verification",
    )
    bench_disputes.add_argument("--records", type=int, default=10_000, help="usage records")
    bench_disputes.add_argument("--files", type=int, default=20, help="files the buyer uploads")
    bench_disputes.add_argument("--total-mib", type=int, default=47, help="their size in all")
    bench_disputes.add_argument("--repeat", type=int, default=5, help="exports and verifications")
    bench_disputes.add_argument("--out", default="ops/bench")
    bench_jobs = bench_commands.add_parser(
        "jobs",
        help="compute jobs: sandbox start overhead beside plain Python, trivial job submit →"
        " result median and p95, jobs/s with one and two runners",
    )
    bench_jobs.add_argument("--starts", type=int, default=100, help="sandbox starts each way")
    bench_jobs.add_argument("--jobs", type=int, default=50, help="one at a time, for latency")
    bench_jobs.add_argument("--burst", type=int, default=40, help="at once, for jobs/s")
    bench_jobs.add_argument("--out", default="ops/bench")
    bench_ledger = bench_commands.add_parser(
        "ledger", help="append N synthetic entries (and tree heads) and time `ledger verify`"
    )
    bench_ledger.add_argument("--entries", type=int, default=1_000_000)
    from exchange.delivery.cli import add_arguments as add_grant_arguments
    from exchange.recognition.cli import add_arguments as add_peer_arguments

    add_peer_arguments(commands)
    add_grant_arguments(commands)
    ledger_cmd = commands.add_parser(
        "ledger",
        help="the registration ledger: verify it, export it, verify a trade's receipt",
        description="verify: recompute every leaf, the hash chain, each signed tree head and"
        " their consistency (and the books, from the database). Exit 0 verified, 1 a problem"
        " (named by sequence number), 2 unreadable input.",
    )
    ledger_commands = ledger_cmd.add_subparsers(
        dest="ledger_command", metavar="TASK", required=True
    )
    verify = ledger_commands.add_parser("verify", help="verify the database's ledger or an export")
    verify.add_argument("--export", dest="export_file", help="verify this export file instead")
    export = ledger_commands.add_parser("export", help="write the ledger as JSON lines")
    export.add_argument("file")
    receipt = ledger_commands.add_parser(
        "verify-receipt", help="check a receipt with only the exchange's JWKS"
    )
    receipt.add_argument("file")
    receipt.add_argument(
        "--jwks", required=True, help="a JWKS file, or the exchange's /.well-known/jwks.json URL"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    offline = _without_bench_extra(args) or _offline(args)
    if offline is not None:
        return offline
    return _online(args)


def _online(args: argparse.Namespace) -> int:
    """Commands that run on the configured servers (or embedded ones started for them)."""
    import asyncio

    from exchange.platform.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"dataex: {error}", file=sys.stderr)
        return 2
    from exchange.platform.logging import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    from exchange import runtime

    try:
        if args.command == "up":
            return runtime.up(settings)
        if args.command == "serve":
            return runtime.serve(args.part, settings)
        if args.command == "migrate":
            with runtime.servers(settings) as live:
                asyncio.run(runtime.prepare(live, bootstrap="never"))
            print("migrations applied; streams provisioned")
            return 0
        if args.command == "keys":
            with runtime.servers(settings) as live:
                kid = asyncio.run(runtime.rotate_key(live))
            print(f"new current signing key {kid}")
            return 0
        if args.command == "policy":
            with runtime.servers(settings) as live:
                return asyncio.run(runtime.policy_task(live, args))
        if args.command in ("seed", "catalog", "ledger", "peers", "grants") or (
            args.command == "bench"
            and args.bench_command
            in ("catalog", "settlement", "ledger", "delivery", "console", "jobs", "disputes")
        ):
            return _server_task(args, settings)
        if args.command == "admin" and args.admin_command == "bootstrap":
            with runtime.servers(settings) as live:
                token = asyncio.run(runtime.prepare(live, bootstrap="always"))
            print(f"admin token (shown once; only its hash is stored):\n{token}")
            return 0
    except (runtime.StartupError, OSError) as error:
        print(f"dataex: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        from exchange.platform.db import MigrationError

        if isinstance(error, MigrationError):
            print(f"dataex: migration error: {error}", file=sys.stderr)
            return 1
        raise
    return 2


def _server_task(args: argparse.Namespace, settings: Settings) -> int:
    bench = getattr(args, "bench_command", None)
    if args.command == "grants":
        from exchange import wiring
        from exchange.delivery.cli import run as grants_task

        return _on_servers(settings, lambda live: grants_task(live, args, wiring.grants))
    if args.command == "peers":
        from exchange import wiring
        from exchange.recognition.cli import run as peers_task

        return _on_servers(settings, lambda live: peers_task(live, args, wiring.recognition))
    if bench in ("disputes", "jobs", "delivery", "console"):
        return _bench_task(args, settings)
    if args.command in ("seed", "catalog") or bench == "catalog":
        return _catalog_task(args, settings)
    return _settlement_task(args, settings)


def _bench_task(args: argparse.Namespace, settings: Settings) -> int:
    """``bench disputes|jobs|delivery|console``: the bench on the servers (delivery's and the
    console's on uvloop)."""
    if args.bench_command == "disputes":
        from benchmarks.disputes import bench_disputes as bench
    elif args.bench_command == "jobs":
        from benchmarks.jobs import bench_jobs as bench
    elif args.bench_command == "delivery":
        from benchmarks.delivery import bench_delivery as bench
    else:
        from benchmarks.console import bench_console as bench
    on_uvloop = args.bench_command in ("delivery", "console")
    return _on_servers(settings, lambda live: bench(live, args, sys.stdout), on_uvloop=on_uvloop)


def _on_servers(
    settings: Settings,
    task: Callable[[Settings], Coroutine[Any, Any, int]],
    *,
    on_uvloop: bool = False,
) -> int:
    """``task`` on the servers a one-off command needs (`runtime.servers`), in an event loop of
    asyncio's own or of uvloop."""
    run: Callable[[Coroutine[Any, Any, int]], int]
    if on_uvloop:
        import uvloop

        run = uvloop.run
    else:
        import asyncio

        run = asyncio.run
    from exchange import runtime

    with runtime.servers(settings) as live:
        return run(task(live))


def _catalog_task(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from exchange import runtime

    with runtime.servers(settings) as live:
        if args.command == "seed":
            from benchmarks.seed import seed

            asyncio.run(runtime.prepare(live, bootstrap="never"))
            return asyncio.run(seed(live, args.products, sys.stdout))
        if args.command == "catalog":
            from exchange.catalog import publish

            return asyncio.run(publish.publish(live, sys.stdout))
        from benchmarks.catalog import bench_catalog

        status: int = asyncio.run(
            bench_catalog(live, args.url, args.requests, args.concurrency, sys.stdout)
        )
        return status


def _settlement_task(args: argparse.Namespace, settings: Settings) -> int:
    """``ledger verify|export`` and ``bench settlement|ledger`` on the configured servers, those
    of a running `dataex up`, or embedded ones started for the command."""
    import asyncio
    from pathlib import Path

    from exchange import runtime
    from settlement import cli as ledger_cli

    with runtime.servers(settings) as live:
        assert live.database_url
        if args.command == "ledger" and args.ledger_command == "export":
            return asyncio.run(ledger_cli.export(live.database_url, Path(args.file), sys.stdout))
        if args.command == "ledger":
            return asyncio.run(ledger_cli.verify_database(
                live.database_url, sys.stdout,
                executed_subject=live.subject("trade", "executed"),
                after_seconds=live.reconcile_after_seconds,
            ))  # fmt: skip
        from benchmarks import settlement as settlement_bench

        if args.bench_command == "ledger":
            return asyncio.run(settlement_bench.bench_ledger(live, args.entries, sys.stdout))
        return asyncio.run(settlement_bench.bench_settlement(live, args, sys.stdout))


def _without_bench_extra(args: argparse.Namespace) -> int | None:
    """2 (and a line saying what to install) for a bench command whose libraries are missing."""
    if args.command != "bench":
        return None
    from benchmarks import missing_extra

    missing = missing_extra(args.bench_command)
    if missing is None:
        return None
    print(missing, file=sys.stderr)
    return 2


def _offline(args: argparse.Namespace) -> int | None:
    """Commands that need no settings and no server; each imports only what it runs."""
    if args.command == "policy" and args.policy_command in ("evaluate", "check"):
        from contracts.policy import cli as policy_cli

        if args.policy_command == "evaluate":
            return policy_cli.evaluate_command(args.file, args.list_file, sys.stdout, sys.stderr)
        return policy_cli.check_command(args.file, sys.stdout, sys.stderr)
    if args.command == "ledger" and (
        args.ledger_command == "verify-receipt"
        or (args.ledger_command == "verify" and args.export_file)
    ):
        return _ledger_offline(args)
    if args.command == "dispute" and args.dispute_command == "verify-bundle":
        from pathlib import Path

        from exchange.disputes.cli import verify_bundle_file
        from settlement.cli import load_jwks

        return verify_bundle_file(Path(args.file), args.jwks, sys.stdout, load_jwks)
    if args.command == "bench":
        return _bench_offline(args)
    return None


def _ledger_offline(args: argparse.Namespace) -> int:
    """``ledger verify-receipt`` and ``ledger verify --export``: a file and a JWKS, no server."""
    from pathlib import Path

    from settlement import cli as ledger_cli

    if args.ledger_command == "verify-receipt":
        return ledger_cli.verify_receipt_file(Path(args.file), args.jwks, sys.stdout)
    return ledger_cli.verify_export(Path(args.export_file), sys.stdout)


def _bench_offline(args: argparse.Namespace) -> int | None:
    """``bench policy`` (one core, in process); ``bench trades`` and ``bench orders``, which
    start their own exchange or drive one at a URL."""
    if args.bench_command == "policy":
        from contracts.policy import cli as policy_cli

        return policy_cli.bench_command(args.seconds, sys.stdout)
    if args.bench_command == "trades":
        import uvloop

        from benchmarks.trades import bench_trades

        # uvloop: the load client shares the machine with the exchange; less CPU per order.
        return uvloop.run(bench_trades(args, sys.stdout))
    if args.bench_command == "orders":
        import asyncio

        from benchmarks.orders import bench_orders

        return asyncio.run(
            bench_orders(args.url, args.admin_token, args.duration, args.concurrency, sys.stdout)
        )
    return None


if __name__ == "__main__":
    sys.exit(main())
