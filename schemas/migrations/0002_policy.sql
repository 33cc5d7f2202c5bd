-- Policy lists (negative / cautious) as immutable published versions, and every decision taken
-- under them. Both tables are append-only.

CREATE TABLE policy_lists (
    version        text PRIMARY KEY CHECK (version ~ '^\d{4}\.\d{1,3}$'),
    digest         text NOT NULL CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),
    title          text NOT NULL,
    source         text NOT NULL,            -- the TOML file as published
    document       jsonb NOT NULL,           -- its parsed form, which the digest is over
    effective_from timestamptz NOT NULL UNIQUE,
    published_at   timestamptz NOT NULL,
    published_by   text NOT NULL
);
CREATE TRIGGER policy_lists_append_only
    BEFORE UPDATE OR DELETE ON policy_lists
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER policy_lists_no_truncate
    BEFORE TRUNCATE ON policy_lists
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TABLE policy_decisions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_type text NOT NULL CHECK (subject_type IN ('listing', 'order')),
    subject_id   text NOT NULL,
    list_version text NOT NULL REFERENCES policy_lists (version),
    list_digest  text NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('allow', 'review', 'reject')),
    document     jsonb NOT NULL,
    decision     jsonb NOT NULL,
    decided_at   timestamptz NOT NULL
);
CREATE INDEX policy_decisions_subject ON policy_decisions (subject_type, subject_id, id DESC);
CREATE TRIGGER policy_decisions_append_only
    BEFORE UPDATE OR DELETE ON policy_decisions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER policy_decisions_no_truncate
    BEFORE TRUNCATE ON policy_decisions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- The listings and orders whose decisions still matter (listed or in review; open orders):
-- the population a replay re-evaluates. Their owners switch `open` as their state changes.
CREATE TABLE policy_subjects (
    subject_type     text NOT NULL,
    subject_id       text NOT NULL,
    open             boolean NOT NULL,
    latest_decision  bigint NOT NULL REFERENCES policy_decisions (id),
    PRIMARY KEY (subject_type, subject_id)
);
CREATE INDEX policy_subjects_open ON policy_subjects (subject_type, subject_id) WHERE open;
