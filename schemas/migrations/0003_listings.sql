-- Listings, revisions, the review queue, signing keys and the transactional outbox.

CREATE TABLE signing_keys (
    kid            text PRIMARY KEY,
    public_jwk     jsonb NOT NULL,
    sealed_private bytea NOT NULL,          -- AES-256-GCM under the master key, kid as AAD
    created_at     timestamptz NOT NULL
);
CREATE TRIGGER signing_keys_append_only
    BEFORE UPDATE OR DELETE ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TABLE outbox (
    id           uuid PRIMARY KEY,          -- the CloudEvent id and the Nats-Msg-Id
    subject      text NOT NULL,
    payload      bytea NOT NULL,
    request_id   text,
    created_at   timestamptz NOT NULL,
    published_at timestamptz
);
CREATE INDEX outbox_pending ON outbox (created_at, id) WHERE published_at IS NULL;

CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dataex_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_wake_relay
    AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

CREATE TABLE product_code_sequences (
    year     integer PRIMARY KEY,
    last     integer NOT NULL
);

CREATE TABLE products (
    id               uuid PRIMARY KEY,
    seller_org_id    uuid NOT NULL REFERENCES organisations (id),
    state            text NOT NULL CHECK (state IN ('draft', 'in_review', 'changes_requested',
                         'rejected', 'listed', 'suspended', 'delisted')),
    draft            jsonb,                 -- the seller's working copy (drafts only)
    live_revision    integer,               -- the listed revision
    pending_revision integer,               -- a revision under review
    product_code     text UNIQUE,
    certificate      text,                  -- compact JWS for the live revision
    legal_prohibition boolean NOT NULL DEFAULT false,
    suspended_reason text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX products_seller ON products (seller_org_id, created_at DESC, id DESC);

-- Every submitted or published version of a product's metadata. Never changed.
CREATE TABLE product_revisions (
    product_id  uuid NOT NULL REFERENCES products (id),
    number      integer NOT NULL CHECK (number > 0),
    metadata    jsonb NOT NULL,
    digest      text NOT NULL CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),
    change      text NOT NULL CHECK (change IN ('initial', 'material', 'cosmetic')),
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (product_id, number)
);
CREATE TRIGGER product_revisions_append_only
    BEFORE UPDATE OR DELETE ON product_revisions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TABLE review_cases (
    id                 uuid PRIMARY KEY,
    kind               text NOT NULL CHECK (kind IN ('listing', 'order')),
    subject_id         uuid NOT NULL,
    subject_org_id     uuid NOT NULL REFERENCES organisations (id),
    revision           integer,
    state              text NOT NULL CHECK (state IN ('open', 'approved', 'changes_requested',
                           'rejected')),
    hits               jsonb NOT NULL,      -- the policy hits, with the evidence each needs
    rules              text[] NOT NULL,
    four_eyes          boolean NOT NULL,
    policy_decision_id bigint REFERENCES policy_decisions (id),
    claimed_by         uuid REFERENCES api_tokens (id),
    claimed_at         timestamptz,
    opened_at          timestamptz NOT NULL,
    closed_at          timestamptz
);
CREATE INDEX review_cases_queue ON review_cases (state, opened_at, id);
CREATE INDEX review_cases_subject ON review_cases (subject_id, opened_at DESC);
CREATE INDEX review_cases_rules ON review_cases USING gin (rules);

CREATE TABLE review_decisions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    case_id      uuid NOT NULL REFERENCES review_cases (id),
    reviewer     uuid NOT NULL REFERENCES api_tokens (id),
    reviewer_org uuid NOT NULL REFERENCES organisations (id),
    verdict      text NOT NULL CHECK (verdict IN ('approve', 'request_changes', 'reject')),
    reason       text NOT NULL,
    evidence     jsonb NOT NULL,
    decided_at   timestamptz NOT NULL,
    UNIQUE (case_id, reviewer)              -- one reviewer, one decision per case
);
CREATE TRIGGER review_decisions_append_only
    BEFORE UPDATE OR DELETE ON review_decisions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
