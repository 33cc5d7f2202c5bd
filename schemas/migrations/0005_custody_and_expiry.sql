-- Custodial signing keys (held by the exchange, sealed under the master key) and the expiry of
-- contracts left unsigned.

ALTER TABLE org_keys ADD COLUMN sealed_private bytea;   -- set only for custodial keys

ALTER TABLE trade_contracts ADD COLUMN expires_at timestamptz;
UPDATE trade_contracts SET expires_at = created_at + interval '72 hours' WHERE expires_at IS NULL;
ALTER TABLE trade_contracts ALTER COLUMN expires_at SET NOT NULL;
ALTER TABLE trade_contracts DROP CONSTRAINT trade_contracts_state_check;
ALTER TABLE trade_contracts ADD CONSTRAINT trade_contracts_state_check
    CHECK (state IN ('awaiting_signatures', 'executed', 'cancelled', 'expired'));
CREATE INDEX trade_contracts_due ON trade_contracts (expires_at) WHERE state = 'awaiting_signatures';

ALTER TABLE orders DROP CONSTRAINT orders_state_check;
ALTER TABLE orders ADD CONSTRAINT orders_state_check
    CHECK (state IN ('in_review', 'awaiting_signatures', 'executed', 'rejected', 'cancelled',
                     'expired'));

ALTER TABLE contract_signatures DROP CONSTRAINT contract_signatures_kind_check;
ALTER TABLE contract_signatures ADD CONSTRAINT contract_signatures_kind_check
    CHECK (kind IN ('signature', 'standing_offer', 'countersignature', 'custodial'));
