-- The events written before 0024 get their subject out of their payloads. Apart from 0024 so
-- that the table is not held under its exclusive lock meanwhile: an UPDATE takes a lock that
-- the exchange's inserts pass (they get their subject from 0024's trigger). It reads each row
-- once; measured in the README (a million events).
UPDATE outbox SET event_subject = outbox_event_subject(payload)
 WHERE event_subject IS NULL AND substring(payload FROM 1 FOR 1) = '\x7b'::bytea;
