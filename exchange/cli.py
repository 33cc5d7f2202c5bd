"""``dataex``: run, serve, migrate and administer the exchange."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from exchange.platform.settings import Settings, SettingsError

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
    serve.add_argument("part", choices=["api", "relay", "settlement"])
    commands.add_parser(
        "migrate",
        help="apply database migrations and provision JetStream streams, then exit",
        description="Idempotent; safe to run from several processes at once (advisory lock).",
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
