"""Benchmarks, synthetic seeding and load clients: tools, not parts of the exchange.

``dataex bench …`` and ``dataex seed`` dispatch here (from ``exchange/cli.py``, inside the
command's function); no module of ``exchange``, ``contracts`` or ``settlement`` imports this
package. It stands at the composition root's level, so it may import theirs (and
``exchange.runtime``).

The libraries only benchmarks use (rich's tables and progress bar, matplotlib's charts, httpx)
are the ``bench`` extra: ``pip install 'dataex[bench]'`` (``uv sync`` has them in the dev group).
They are imported inside the functions that use them; `missing_extra` tells a command run
without them what to install before it starts.
"""

from __future__ import annotations

from importlib.util import find_spec

# The optional libraries each `dataex bench` command needs (its others need none).
NEEDS: dict[str, tuple[str, ...]] = {
    "trades": ("rich", "matplotlib"),
    "delivery": ("rich", "matplotlib"),
    "orders": ("httpx",),
    "catalog": ("httpx",),
    "console": ("httpx",),
    "disputes": ("httpx",),
}


def missing_extra(command: str) -> str | None:
    """None when ``dataex bench <command>`` can run; otherwise a one-line message saying what to
    install."""
    missing = [name for name in NEEDS.get(command, ()) if find_spec(name) is None]
    if not missing:
        return None
    return (
        f"dataex bench {command} needs the bench extra ({', '.join(missing)} not installed):"
        " pip install 'dataex[bench]' (or uv sync --extra bench)"
    )
