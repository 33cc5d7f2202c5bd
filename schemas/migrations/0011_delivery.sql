-- Delivery (可控可计量): grants, quotas leased to gateway processes, usage records, billing
-- periods, delivery tokens, upstreams and stored files. The delivery room owns every table here.

-- One grant per executed trade and delivery mode. Rows are changed only through the delivery
-- room's transition table (exchange/delivery/states.py); every change is an outbox event.
CREATE TABLE grants (
    id              uuid PRIMARY KEY,
    trade_id        uuid NOT NULL,              -- the contract id (dx.trade.executed)
    mode            text NOT NULL CHECK (mode IN ('file', 'api', 'sandbox')),
    buyer_org_id    uuid NOT NULL,
    seller_org_id   uuid NOT NULL,
    buyer_uscc      text,
    seller_uscc     text,
    product_id      uuid NOT NULL,
    product_code    text NOT NULL,
    revision        integer NOT NULL,
    revision_digest text NOT NULL,
    plan_id         text NOT NULL,
    pricing         text NOT NULL CHECK (pricing IN ('one_off', 'subscription', 'metered')),
    purpose         text NOT NULL,
    territory       text[] NOT NULL,
    valid_from      timestamptz NOT NULL,
    valid_until     timestamptz NOT NULL,
    dimensions      jsonb NOT NULL,             -- [{name, unit_price_millifen, quota}]
    spend_cap_fen   bigint CHECK (spend_cap_fen >= 0),  -- metered plans: reserved, with top-ups
    state           text NOT NULL CHECK (state IN ('pending', 'active', 'suspended', 'exhausted',
                                                   'expired', 'revoked')),
    -- Why it is suspended, every cause that holds (it resumes when none is left).
    suspended_by    text[] NOT NULL DEFAULT '{}' CHECK (suspended_by <@ ARRAY['listing', 'buyer',
                        'seller', 'spend_cap', 'dispute', 'exchange']),
    reason          text,
    activated_at    timestamptz,                -- settlement reserved the payment
    billed_until    timestamptz,                -- the end of its last billing period
    books_closed    boolean NOT NULL DEFAULT false,  -- its final period is closed
    version         bigint NOT NULL DEFAULT 1,  -- raised by every change (caches compare it)
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    UNIQUE (trade_id, mode),
    CHECK ((state = 'suspended') = (cardinality(suspended_by) > 0)),
    CHECK (valid_until > valid_from)
);
CREATE INDEX grants_buyer ON grants (buyer_org_id, created_at DESC, id DESC);
CREATE INDEX grants_seller ON grants (seller_org_id, created_at DESC, id DESC);
CREATE INDEX grants_product ON grants (product_code) WHERE state IN ('pending', 'active', 'suspended');
CREATE INDEX grants_expiry ON grants (valid_until) WHERE state IN ('pending', 'active', 'suspended');
-- What billing looks at every round: grants whose period is an hour old, and the few that are
-- not active (a period closes early at the cap, finally at the end).
CREATE INDEX grants_billing_due ON grants ((coalesce(billed_until, activated_at)))
    WHERE NOT books_closed AND activated_at IS NOT NULL;
CREATE INDEX grants_billing_halted ON grants (id)
    WHERE NOT books_closed AND activated_at IS NOT NULL AND state <> 'active';

-- Settlement's news of a trade that came before its executed event (a redelivery can reorder
-- them): applied when the grants are created.
CREATE TABLE delivery_trade_news (
    trade_id uuid PRIMARY KEY,
    news     text NOT NULL CHECK (news IN ('reserved', 'voided', 'failed')),
    at       timestamptz NOT NULL
);

-- Quotas per grant and dimension, in units (`spend` is the spend cap in milli-fen). What is
-- used (recorded) plus what is leased to gateway processes never exceeds the limit: the
-- database refuses it, so no process can over-serve.
CREATE TABLE grant_quotas (
    grant_id     uuid NOT NULL REFERENCES grants (id),
    dimension    text NOT NULL CHECK (dimension ~ '^[a-z][a-z0-9_]{0,14}$'),
    limit_units  bigint NOT NULL CHECK (limit_units >= 0),
    used_units   bigint NOT NULL DEFAULT 0 CHECK (used_units >= 0),
    leased_units bigint NOT NULL DEFAULT 0 CHECK (leased_units >= 0),
    PRIMARY KEY (grant_id, dimension),
    CONSTRAINT grant_quotas_within_limit CHECK (used_units + leased_units <= limit_units)
);

-- A block of units a gateway process took and spends in memory. Closed by the process (its
-- unused part returns) or, once it has expired, by the reaper; either way `used` is counted
-- from the usage records written under it, never taken from the process's word.
CREATE TABLE quota_leases (
    id         uuid PRIMARY KEY,
    grant_id   uuid NOT NULL REFERENCES grants (id),
    dimension  text NOT NULL,
    holder     text NOT NULL,                   -- host:pid of the gateway process
    units      bigint NOT NULL CHECK (units > 0),
    used       bigint CHECK (used >= 0 AND used <= units),
    leased_at  timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    closed_at  timestamptz,
    CHECK ((closed_at IS NULL) = (used IS NULL))
);
CREATE INDEX quota_leases_open ON quota_leases (expires_at) WHERE closed_at IS NULL;
CREATE INDEX quota_leases_grant ON quota_leases (grant_id) WHERE closed_at IS NULL;

-- Every served request or byte range, written before the answer is released to the buyer
-- (unique usage id, append-only). `units` holds the dimensions it spent; `leases` the lease
-- each dimension was spent from.
CREATE TABLE usage_records (
    id            uuid PRIMARY KEY,
    grant_id      uuid NOT NULL REFERENCES grants (id),
    served_at     timestamptz NOT NULL,
    units         jsonb NOT NULL,               -- {"requests": 1, "bytes": 5120, "rows": 3}
    leases        uuid[] NOT NULL,
    cost_millifen bigint NOT NULL CHECK (cost_millifen >= 0),
    detail        jsonb NOT NULL,               -- method, path, status, range
    period_seq    integer                       -- the billing period that closed it
);
CREATE INDEX usage_records_open ON usage_records (grant_id) WHERE period_seq IS NULL;
CREATE INDEX usage_records_grant ON usage_records (grant_id, served_at);
CREATE INDEX usage_records_leases ON usage_records USING gin (leases);
-- Append-only but for `period_seq`, set once by the period that closes the record.
CREATE FUNCTION usage_record_close_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR OLD.period_seq IS NOT NULL OR NEW.period_seq IS NULL
       OR (NEW.id, NEW.grant_id, NEW.served_at, NEW.units, NEW.leases, NEW.cost_millifen,
           NEW.detail) IS DISTINCT FROM (OLD.id, OLD.grant_id, OLD.served_at, OLD.units,
           OLD.leases, OLD.cost_millifen, OLD.detail) THEN
        RAISE EXCEPTION 'usage records are append-only (a period is assigned once)'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER usage_records_close_only BEFORE UPDATE OR DELETE ON usage_records
    FOR EACH ROW EXECUTE FUNCTION usage_record_close_only();
CREATE TRIGGER usage_records_no_truncate BEFORE TRUNCATE ON usage_records
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Closed billing periods: totals per dimension and the charge, as a signed statement.
CREATE TABLE usage_periods (
    grant_id      uuid NOT NULL REFERENCES grants (id),
    seq           integer NOT NULL CHECK (seq >= 1),
    starts_at     timestamptz NOT NULL,
    ends_at       timestamptz NOT NULL,
    records       bigint NOT NULL,
    totals        jsonb NOT NULL,
    cost_millifen bigint NOT NULL,
    charge_fen    bigint NOT NULL CHECK (charge_fen >= 0),
    final         boolean NOT NULL,             -- the grant has ended: no period follows
    statement     bytea NOT NULL,               -- RFC 8785 JSON
    digest        text NOT NULL,
    jws           text NOT NULL,
    closed_at     timestamptz NOT NULL,
    PRIMARY KEY (grant_id, seq)
);
CREATE TRIGGER usage_periods_append_only BEFORE UPDATE OR DELETE ON usage_periods
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
-- Delivery tokens issued (short-lived compact JWS): who asked, when, and revocation by jti.
CREATE TABLE delivery_tokens (
    jti        uuid PRIMARY KEY,
    grant_id   uuid NOT NULL REFERENCES grants (id),
    scope      text NOT NULL,
    issued_to  uuid NOT NULL,                   -- the buyer organisation
    issued_at  timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX delivery_tokens_grant ON delivery_tokens (grant_id, issued_at DESC);
CREATE INDEX delivery_tokens_revoked ON delivery_tokens (expires_at) WHERE revoked_at IS NOT NULL;

-- API delivery: where the gateway forwards a product's calls.
CREATE TABLE delivery_upstreams (
    product_id    uuid PRIMARY KEY,
    base_url      text NOT NULL CHECK (base_url ~ '^https?://'),
    registered_by uuid NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

-- File delivery: content-addressed blobs (encrypted at rest, per-file key wrapped by the
-- master key), the revision files they are, and resumable uploads in progress.
CREATE TABLE delivery_blobs (
    sha256      text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes  bigint NOT NULL CHECK (size_bytes >= 0),
    wrapped_key bytea NOT NULL,
    chunk_bytes integer NOT NULL CHECK (chunk_bytes > 0),
    stored_at   timestamptz NOT NULL
);
CREATE TABLE delivery_files (
    product_id uuid NOT NULL,
    revision   integer NOT NULL,
    name       text NOT NULL,
    sha256     text NOT NULL REFERENCES delivery_blobs (sha256),
    size_bytes bigint NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (product_id, revision, name)
);
CREATE TABLE delivery_uploads (
    id          uuid PRIMARY KEY,
    product_id  uuid NOT NULL,
    revision    integer NOT NULL,
    name        text NOT NULL,
    sha256      text NOT NULL,
    size_bytes  bigint NOT NULL CHECK (size_bytes >= 0),
    chunk_bytes integer NOT NULL CHECK (chunk_bytes > 0),
    received    integer[] NOT NULL DEFAULT '{}',  -- chunk numbers stored
    state       text NOT NULL CHECK (state IN ('open', 'complete', 'abandoned')),
    created_by  uuid NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE UNIQUE INDEX delivery_uploads_one_open ON delivery_uploads (product_id, revision, name)
    WHERE state = 'open';
