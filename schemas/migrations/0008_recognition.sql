-- Recognition across exchanges (一地上架,全国互认): trusted peers and their pinned keys, the
-- member credentials this exchange issues and those it accepted from peers, the products it
-- recognises from peers, and the signed feed of this exchange's own listing events that peers pull.

-- Trusted peer exchanges. A removed peer keeps its row (the audit trail names it); its
-- recognised products are suspended at once.
CREATE TABLE peers (
    code        text PRIMARY KEY CHECK (code ~ '^[A-Z][A-Z0-9]{1,7}$'),
    name        text NOT NULL,
    base_url    text NOT NULL,
    jwks        jsonb NOT NULL,             -- pinned public keys, verified at registration
    feed_url    text NOT NULL,
    identity    text NOT NULL,              -- the peer's signed identity document (JWS)
    cursor      bigint NOT NULL DEFAULT 0,  -- last feed sequence number applied
    last_pull_at timestamptz,
    last_error  text,
    added_at    timestamptz NOT NULL,
    removed_at  timestamptz
);

-- Member credentials this exchange issued (一地注册,全国互信). Never changed.
CREATE TABLE member_credentials (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES organisations (id),
    jws         text NOT NULL,
    issued_at   timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX member_credentials_org ON member_credentials (org_id, issued_at DESC);
CREATE TRIGGER member_credentials_append_only
    BEFORE UPDATE OR DELETE ON member_credentials
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

-- Organisations registered (or trusted) here on a peer's credential.
CREATE TABLE accepted_credentials (
    org_id      uuid NOT NULL REFERENCES organisations (id),
    issuer      text NOT NULL REFERENCES peers (code),
    jti         text NOT NULL,
    jws         text NOT NULL,
    expires_at  timestamptz NOT NULL,
    accepted_at timestamptz NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX accepted_credentials_org ON accepted_credentials (org_id, accepted_at DESC);

-- A product recognised from a peer is a local product row (so catalog, orders and contracts
-- treat it as any other) that names its origin.
ALTER TABLE products ADD COLUMN recognised_from text;

-- One row per (origin, product code): where the recognition stands, ordered by the origin's
-- revision and feed sequence so a stale or replayed message never undoes a newer one.
CREATE TABLE recognitions (
    origin         text NOT NULL REFERENCES peers (code),
    product_code   text NOT NULL,
    product_id     uuid REFERENCES products (id),     -- NULL while refused
    revision       integer NOT NULL,
    revision_digest text NOT NULL,
    origin_state   text NOT NULL CHECK (origin_state IN ('listed', 'suspended', 'delisted')),
    outcome        text NOT NULL CHECK (outcome IN ('recognised', 'refused')),
    refusal        jsonb,                   -- the local rule(s) that refused, with explanations
    cleared        text[] NOT NULL DEFAULT '{}',  -- local cautious product rules the origin's
                                            -- review cleared for this revision (mutual recognition)
    revoked_before timestamptz,             -- certificates issued up to here are revoked
    feed_seq       bigint NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (origin, product_code)
);
CREATE INDEX recognitions_product ON recognitions (product_id) WHERE product_id IS NOT NULL;

-- This exchange's listing events, in commit order (appends take a transaction-scoped lock, so
-- a reader paging by sequence never skips a row committed late). Never changed.
CREATE TABLE listing_feed (
    seq             bigint PRIMARY KEY,
    event           text NOT NULL CHECK (event IN ('published', 'suspended', 'delisted')),
    product_id      uuid NOT NULL REFERENCES products (id),
    product_code    text NOT NULL,
    revision        integer,
    revision_digest text,
    certificate     text,
    metadata        jsonb,
    reason          text,
    at              timestamptz NOT NULL
);
CREATE TRIGGER listing_feed_append_only
    BEFORE UPDATE OR DELETE ON listing_feed
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
