"""What `dataex up` knows of its parts and servers, as a small file the API reads for readiness.

The supervisor (``exchange.supervisor``) rewrites the file (atomically, mode 0600) at every
change: a part started, died, restarted; an embedded server died or came back. The API reads it
on ``/health/ready`` when ``DATAEX_SUPERVISOR_STATUS`` names it, which only `dataex up` sets.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Literal

import msgspec

PartState = Literal["starting", "running", "restarting", "stopped"]
ServerState = Literal["running", "restarting", "external"]


class PartStatus(msgspec.Struct, kw_only=True):
    state: PartState
    pid: int | None = None
    restarts: int = 0  # since `dataex up` started
    last_exit: int | None = None  # the exit code (negative: the signal) of its last death


class ServerStatus(msgspec.Struct, kw_only=True):
    state: ServerState
    restarts: int = 0


class SupervisorStatus(msgspec.Struct, kw_only=True):
    pid: int
    parts: dict[str, PartStatus]
    servers: dict[str, ServerStatus]

    def down(self) -> list[str]:
        """What is not running, one phrase each; empty when all is up."""
        said = [
            f"PostgreSQL {status.state}" if name == "postgres" else f"NATS {status.state}"
            for name, status in self.servers.items()
            if status.state == "restarting"
        ]
        said += [
            f"{name} {status.state}" + (f" (restart {status.restarts})" if status.restarts else "")
            for name, status in self.parts.items()
            if status.state != "running"
        ]
        return said


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SupervisorStatus)


def write_status(path: Path, status: SupervisorStatus) -> None:
    """Replace the file in one step: a reader sees the old status or the new, never half."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(_encoder.encode(status))
    temporary.replace(path)


def read_status(path: Path) -> SupervisorStatus | None:
    """The status, or None when the file is missing or unreadable (then nothing is claimed)."""
    with contextlib.suppress(OSError, msgspec.DecodeError):
        return _decoder.decode(path.read_bytes())
    return None
