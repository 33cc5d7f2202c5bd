-- Disputes in settlement (issue 21): a dispute's resolution may split a trade's escrow between
-- the buyer and the seller (state 'split', movement 'split'), or pay a metered trade's buyer
-- back from what its periods paid (movement 'refund', keyed by the dispute). The objection
-- columns (objection, objected_at) stay: landed migrations are never edited, and trades
-- objected to before disputes replaced objections keep what was said.
ALTER TABLE settlement_trades DROP CONSTRAINT settlement_trades_state_check;
ALTER TABLE settlement_trades ADD CONSTRAINT settlement_trades_state_check
    CHECK (state IN ('pending', 'reserved', 'disputed', 'failed', 'settled', 'voided', 'split'));

ALTER TABLE movements DROP CONSTRAINT movements_kind_check;
ALTER TABLE movements ADD CONSTRAINT movements_kind_check
    CHECK (kind IN ('deposit', 'withdrawal', 'reserve', 'post', 'void', 'top_up', 'usage',
                    'release', 'split', 'refund'));
ALTER TABLE movements DROP CONSTRAINT movements_step_key;
ALTER TABLE movements ADD CONSTRAINT movements_step_key
    CHECK ((step_key IS NOT NULL) = (kind IN ('top_up', 'usage', 'refund')));

-- A trade objected to under the old flow is 'disputed' with no dispute to resolve it (the
-- disputes room's tables come after this migration). It goes back to 'reserved' with at
-- least seven days of its acceptance period ahead, so its buyer can open a dispute (and
-- settlement posts it if none comes); its objection stays in `objection`.
UPDATE settlement_trades
   SET state = 'reserved', acceptance_due = greatest(acceptance_due, now() + interval '7 days'),
       updated_at = now()
 WHERE state = 'disputed';
