-- A metered trade's usage statements as settlement posted them, so its receipt can carry each
-- one beside the ledger entry that registered it. One row per (trade, grant, period): a
-- trade has one grant per delivery mode and each grant numbers its own periods. Written with
-- the period's movement and ledger entry, in one transaction; never changed.
CREATE TABLE usage_statements (
    trade_id   uuid NOT NULL REFERENCES settlement_trades (trade_id),
    grant_id   uuid NOT NULL,
    period     integer NOT NULL CHECK (period >= 1),
    digest     text NOT NULL,                  -- sha256:<hex> of `statement`
    statement  bytea NOT NULL,                 -- RFC 8785 JSON, the bytes the digest is over
    jws        text NOT NULL,                  -- the exchange's signature over the statement
    charge_fen bigint NOT NULL CHECK (charge_fen >= 0),
    fee_fen    bigint NOT NULL CHECK (fee_fen >= 0 AND fee_fen <= charge_fen),
    ledger_seq bigint NOT NULL UNIQUE REFERENCES ledger_entries (seq),
    posted_at  timestamptz NOT NULL,
    PRIMARY KEY (trade_id, grant_id, period)
);
CREATE TRIGGER usage_statements_append_only BEFORE UPDATE OR DELETE ON usage_statements
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER usage_statements_no_truncate BEFORE TRUNCATE ON usage_statements
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
