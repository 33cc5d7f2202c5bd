"""The live platform of one process: settings, clock, database pool, NATS connection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from exchange.platform.clock import Clock
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing


@dataclass(slots=True)
class Platform:
    settings: Settings
    clock: Clock
    pool: asyncpg.Pool
    nats: Any  # nats.aio.client.Client (untyped library)
    keyring: KeyRing
    # Objects the process's requests share, by name (the API's order group commit).
    shared: dict[str, Any] = field(default_factory=dict)
