-- Metered trades in settlement: the spend cap is reserved at execution (price = cap, fee 0);
-- each closed period posts once (usage), top-ups reserve more, the rest is released at the end.
ALTER TABLE settlement_trades ADD COLUMN metered boolean NOT NULL DEFAULT false;
ALTER TABLE settlement_trades ADD COLUMN fee_bps integer CHECK (fee_bps BETWEEN 0 AND 10000);
ALTER TABLE settlement_trades ADD COLUMN reserved_fen bigint;   -- metered: cap + top-ups
ALTER TABLE settlement_trades ADD COLUMN posted_fen bigint;     -- metered: periods posted
ALTER TABLE settlement_trades ADD CONSTRAINT settlement_trades_metered_within
    CHECK (NOT metered OR (posted_fen IS NOT NULL AND reserved_fen IS NOT NULL
                            AND posted_fen <= reserved_fen));
ALTER TABLE movements ADD COLUMN step_key text;  -- (trade, kind, key): a period, a top-up
ALTER TABLE movements DROP CONSTRAINT movements_trade_id_kind_key;
CREATE UNIQUE INDEX movements_trade_step ON movements (trade_id, kind)
    WHERE trade_id IS NOT NULL AND step_key IS NULL;
CREATE UNIQUE INDEX movements_trade_keyed_step ON movements (trade_id, kind, step_key)
    WHERE step_key IS NOT NULL;
ALTER TABLE movements DROP CONSTRAINT movements_kind_check;
ALTER TABLE movements ADD CONSTRAINT movements_kind_check
    CHECK (kind IN ('deposit', 'withdrawal', 'reserve', 'post', 'void', 'top_up', 'usage',
                    'release'));
ALTER TABLE movements ADD CONSTRAINT movements_step_key
    CHECK ((step_key IS NOT NULL) = (kind IN ('top_up', 'usage')));
