"""The data gateway (API delivery): one ASGI app, run as processes of its own.

`Gateway` is the app (`exchange.delivery.gateway.app`); `serve` runs it under granian
(`exchange.delivery.gateway.process`); ``python -m exchange.delivery.gateway --port N`` does
the same from a shell, with the settings of the environment.
"""

from exchange.delivery.gateway.app import Gateway
from exchange.delivery.gateway.process import serve

__all__ = ["Gateway", "serve"]
