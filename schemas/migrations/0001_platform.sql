-- Platform: organisations, API tokens, the append-only audit trail, process heartbeats.

CREATE TABLE organisations (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- Unified social credit code (GB 32100-2015), upper case. Only the exchange's own operator
    -- organisation may have none.
    uscc        text UNIQUE CHECK (uscc ~ '^[0-9A-HJ-NPQRTUWXY]{18}$'),
    roles       text[] NOT NULL CHECK (
                    cardinality(roles) > 0
                    AND roles <@ ARRAY['seller', 'buyer', 'reviewer', 'admin']
                    -- staff roles and market roles never mix in one organisation
                    AND NOT (roles && ARRAY['seller', 'buyer'] AND roles && ARRAY['reviewer', 'admin'])
                ),
    region      text NOT NULL CHECK (region ~ '^[0-9]{6}$'),
    contact     jsonb NOT NULL,
    is_operator boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    CHECK (uscc IS NOT NULL OR is_operator)
);
-- At most one operator (the exchange itself).
CREATE UNIQUE INDEX organisations_one_operator ON organisations (is_operator) WHERE is_operator;

CREATE TABLE api_tokens (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES organisations (id),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    roles       text[] NOT NULL CHECK (cardinality(roles) > 0),
    -- SHA-256 of the whole token; the token itself is shown once and never stored.
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    created_by  uuid REFERENCES api_tokens (id),
    CHECK (expires_at > created_at)
);
CREATE INDEX api_tokens_org ON api_tokens (org_id, created_at DESC);

-- Append-only: who did what, when, under which request, with digests of the state before/after.
CREATE TABLE audit_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             timestamptz NOT NULL,
    actor          text NOT NULL,
    actor_org_id   uuid,
    actor_token_id uuid,
    action         text NOT NULL,
    subject_type   text NOT NULL,
    subject_id     text NOT NULL,
    request_id     text,
    before_digest  text,
    after_digest   text,
    detail         jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_subject ON audit_log (subject_type, subject_id, id DESC);
CREATE INDEX audit_log_action ON audit_log (action, id DESC);
CREATE INDEX audit_log_actor_org ON audit_log (actor_org_id, id DESC);
CREATE INDEX audit_log_at ON audit_log (at, id);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Liveness of the long-running parts (API, relay, settlement), shown by /health/ready.
CREATE TABLE process_heartbeats (
    part       text NOT NULL,
    instance   text NOT NULL,
    pid        integer NOT NULL,
    started_at timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL,
    PRIMARY KEY (part, instance)
);
