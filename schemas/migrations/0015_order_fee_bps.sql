-- Metered plans (billed by use): the order's price is the buyer's spend cap and its fee 0; the
-- fee is taken from each billing period's charge at the basis points of the fee rule in effect
-- when the order was placed. They are kept with the order, as its fee is, so a contract drafted
-- later (after a review) fixes the same rule. NULL for every other order.
ALTER TABLE orders ADD COLUMN fee_bps integer CHECK (fee_bps BETWEEN 0 AND 10000);
