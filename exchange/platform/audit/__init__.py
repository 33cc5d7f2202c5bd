"""The append-only audit trail: who did what, when, under which request."""

from exchange.platform.audit.repository import Actor, record

__all__ = ["Actor", "record"]
