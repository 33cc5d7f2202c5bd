-- The CloudEvent subject of each event (what it is about: a grant's id, a trade's), stored
-- beside its payload and indexed, so an aggregate's history (a dispute's evidence of a trade's
-- grants, read in the transaction that opens the dispute) is found through an index rather than
-- by decoding every event of that kind the exchange ever wrote. Messages that are not events (a
-- job's id on the work queue) keep NULL. Adding the column rewrites nothing; the rows written
-- before it get their subject in 0026, apart from this migration, which holds the table's
-- exclusive lock.
ALTER TABLE outbox ADD COLUMN event_subject text;

-- The subject in a payload: NULL for one that is not a JSON object or that cannot be read (a
-- row this does not understand is left without one, never a migration or an insert failed).
CREATE FUNCTION outbox_event_subject(payload bytea) RETURNS text
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF substring(payload FROM 1 FOR 1) IS DISTINCT FROM '\x7b'::bytea THEN
        RETURN NULL;
    END IF;
    RETURN convert_from(payload, 'UTF8')::json ->> 'subject';
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;

-- A writer that does not name it (a process of the release before this one, still running in a
-- rolling upgrade; a hand-written insert) gets it from its payload, so the readers, which read
-- only the column, miss no event.
CREATE FUNCTION outbox_fill_event_subject() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.event_subject := outbox_event_subject(NEW.payload);
    RETURN NEW;
END
$$;
CREATE TRIGGER outbox_event_subject
    BEFORE INSERT ON outbox
    FOR EACH ROW WHEN (NEW.event_subject IS NULL)
    EXECUTE FUNCTION outbox_fill_event_subject();

CREATE INDEX outbox_event_subject ON outbox (event_subject) WHERE event_subject IS NOT NULL;
