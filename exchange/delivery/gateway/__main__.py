"""``python -m exchange.delivery.gateway [--port N] [--workers W] [--host H]``."""

from __future__ import annotations

import argparse
import sys

from exchange.delivery.gateway.process import DEFAULT_PORT, serve
from exchange.platform.settings import Settings, SettingsError


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m exchange.delivery.gateway")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--host", default=None)
    args = parser.parse_args()
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    return serve(settings, port=args.port, workers=args.workers, host=args.host)


if __name__ == "__main__":
    sys.exit(main())
