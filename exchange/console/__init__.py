"""The staff console: server-rendered pages (Jinja, htmx) for review, trades, settlement,
policy lists, recognition, delivery and the audit trail, over the rooms' own services."""
