-- The W3C traceparent of the span that wrote each event (the request, or the worker handling an
-- earlier event), so the relay can send it with the message and an order can be followed from
-- its request to its settlement. Nullable, no default: adding it rewrites nothing.
ALTER TABLE outbox ADD COLUMN traceparent text;
