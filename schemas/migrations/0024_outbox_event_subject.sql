-- The CloudEvent subject of each event (what it is about: a grant's id, a trade's), stored
-- beside its payload and indexed, so an aggregate's history (a dispute's evidence of a trade's
-- grants, read in the transaction that opens the dispute) is found through an index rather than
-- by decoding every event of that kind the exchange ever wrote. Messages that are not events (a
-- job's id on the work queue) keep NULL. Rows already written get it from their payload.
ALTER TABLE outbox ADD COLUMN event_subject text;
UPDATE outbox SET event_subject = convert_from(payload, 'UTF8')::json ->> 'subject'
 WHERE substring(payload FROM 1 FOR 1) = '\x7b'::bytea;  -- a JSON object: a CloudEvent
CREATE INDEX outbox_event_subject ON outbox (event_subject) WHERE event_subject IS NOT NULL;
