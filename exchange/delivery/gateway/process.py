"""Running the gateway: as granian worker processes (`serve`), or from the environment.

The gateway is a part of its own, beside the API: ``dataex serve gateway --port N --workers W``
(proposed) calls `serve`. Each worker is one process with its own grant cache, leases and
usage recorder; processes share nothing but PostgreSQL and NATS, so they may run on several
machines behind any load balancer.
"""

from __future__ import annotations

from exchange.delivery.gateway.app import Gateway
from exchange.platform.logging import configure_logging
from exchange.platform.settings import Settings

DEFAULT_PORT = 8100


def create_gateway_from_env() -> Gateway:
    """Factory for granian: settings from the environment, logging configured."""
    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    return Gateway(settings)


def serve(
    settings: Settings, *, port: int = DEFAULT_PORT, workers: int = 1, host: str | None = None
) -> int:
    """Serve the gateway on ``host:port`` (the API's host by default) with ``workers`` processes
    until SIGINT/SIGTERM. ``settings`` reach the workers through the environment."""
    import os

    from granian.constants import HTTPModes, Interfaces
    from granian.server import Server

    os.environ.update(settings.to_env())
    Server(
        "exchange.delivery.gateway.process:create_gateway_from_env",
        address=host or settings.http_host,
        port=port,
        interface=Interfaces.ASGI,
        http=HTTPModes.http1,
        workers=workers,
        factory=True,
        log_access=False,
        websockets=False,
        workers_kill_timeout=2,
        respawn_failed_workers=True,  # as the API's: see exchange.runtime.serve
    ).serve()
    return 0
