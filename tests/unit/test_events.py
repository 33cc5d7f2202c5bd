"""The event schemas checked in under schemas/events match the event types."""

from __future__ import annotations

from exchange.platform.events import EVENTS_DIR, generators, render


def test_checked_in_event_schemas_match_the_code():
    for name, generate in generators().items():
        committed = (EVENTS_DIR / name).read_text(encoding="utf-8")
        assert committed == render(generate()), (
            f"schemas/events/{name} is stale: run `uv run python -m exchange.platform.events`"
        )
