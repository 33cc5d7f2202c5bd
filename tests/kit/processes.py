"""Running `dataex` as a user would: the repository root, free ports, a clean environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any DATAEX_* variable, plus ``extra``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DATAEX_")} | extra


def server_env(settings: Any, state_dir: Any) -> dict[str, str]:
    """Environment for a `dataex` subprocess using the test run's own database and stream."""
    return clean_env(
        DATAEX_STATE_DIR=str(state_dir),
        DATAEX_DATABASE_URL=settings.database_url,
        DATAEX_NATS_URL=settings.nats_url,
        DATAEX_STREAM_NAME=settings.stream_name,
        DATAEX_SUBJECT_PREFIX=settings.subject_prefix,
    )


def run_dataex(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exchange.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
        env=env,
    )
