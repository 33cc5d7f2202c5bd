-- Keys by purpose: the exchange's signing key (certificates, contracts, the ledger) and the
-- delivery key (delivery tokens, the gateway's RFC 9421 signatures), each rotated on its own.
ALTER TABLE signing_keys ADD COLUMN purpose text NOT NULL DEFAULT 'exchange'
    CHECK (purpose IN ('exchange', 'delivery'));
