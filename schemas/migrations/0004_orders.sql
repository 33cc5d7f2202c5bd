-- Orders, idempotency keys, organisations' signing keys, standing offers, contracts.

CREATE TABLE idempotency_keys (
    org_id       uuid NOT NULL REFERENCES organisations (id),
    key          text NOT NULL,
    route        text NOT NULL,
    request_hash text NOT NULL,
    status       integer,                   -- NULL while the first request is in flight
    response     bytea,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (org_id, key)
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);

CREATE TABLE org_keys (
    kid        text PRIMARY KEY,            -- RFC 7638 thumbprint
    org_id     uuid NOT NULL REFERENCES organisations (id),
    jwk        jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX org_keys_org ON org_keys (org_id);

CREATE TABLE standing_offers (
    id           uuid PRIMARY KEY,
    product_id   uuid NOT NULL REFERENCES products (id),
    revision     integer NOT NULL,
    plan_id      text NOT NULL,
    offer        jsonb NOT NULL,            -- the terms the seller signed
    offer_digest text NOT NULL,
    jws          text NOT NULL,             -- detached JWS by the seller's key
    created_at   timestamptz NOT NULL,
    UNIQUE (product_id, revision, plan_id)
);

CREATE TABLE orders (
    id               uuid PRIMARY KEY,
    buyer_org_id     uuid NOT NULL REFERENCES organisations (id),
    seller_org_id    uuid NOT NULL REFERENCES organisations (id),
    product_id       uuid NOT NULL REFERENCES products (id),
    revision         integer NOT NULL,
    plan_id          text NOT NULL,
    terms            jsonb NOT NULL,
    state            text NOT NULL CHECK (state IN ('in_review', 'awaiting_signatures',
                         'executed', 'rejected', 'cancelled')),
    cross_border     boolean NOT NULL,
    sensitive_pi     boolean NOT NULL,
    pi_subject_count bigint NOT NULL CHECK (pi_subject_count >= 0),
    price_fen        bigint NOT NULL CHECK (price_fen >= 0),
    fee_fen          bigint NOT NULL CHECK (fee_fen >= 0),
    decision         jsonb NOT NULL,
    reason           text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    executed_at      timestamptz
);
CREATE INDEX orders_buyer ON orders (buyer_org_id, created_at DESC, id DESC);
CREATE INDEX orders_seller_exports ON orders (seller_org_id, executed_at)
    WHERE state = 'executed' AND cross_border;

CREATE TABLE trade_contracts (
    id          uuid PRIMARY KEY,
    order_id    uuid NOT NULL UNIQUE REFERENCES orders (id),
    template    text NOT NULL,
    document    jsonb NOT NULL,
    digest      text NOT NULL,
    text_zh     text NOT NULL,
    state       text NOT NULL CHECK (state IN ('awaiting_signatures', 'executed', 'cancelled')),
    created_at  timestamptz NOT NULL,
    executed_at timestamptz
);

CREATE TABLE contract_signatures (
    contract_id uuid NOT NULL REFERENCES trade_contracts (id),
    party       text NOT NULL CHECK (party IN ('seller', 'buyer', 'exchange')),
    kind        text NOT NULL CHECK (kind IN ('signature', 'standing_offer', 'countersignature')),
    kid         text NOT NULL,
    jws         text NOT NULL,
    signed_at   timestamptz NOT NULL,
    PRIMARY KEY (contract_id, party)
);
CREATE TRIGGER contract_signatures_append_only
    BEFORE UPDATE OR DELETE ON contract_signatures
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
