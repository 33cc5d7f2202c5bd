-- Why a product is suspended is a field, not a phrase in its reason. The listing room's
-- transition table reads it: an origin exchange's news never undoes a suspension decided by
-- this exchange's staff, and trust given back restores only what distrust had hidden.
ALTER TABLE products ADD COLUMN suspended_by text
    CHECK (suspended_by IN ('exchange', 'origin', 'distrust', 'local_policy'));

-- Rows suspended before this migration: the cause was written into the reason.
UPDATE products SET suspended_by = CASE
        WHEN recognised_from IS NOT NULL
             AND suspended_reason LIKE 'suspended by ' || recognised_from || '%' THEN 'origin'
        WHEN recognised_from IS NOT NULL
             AND suspended_reason = 'peer exchange ' || recognised_from || ' is no longer trusted'
            THEN 'distrust'
        WHEN suspended_reason = 'a newer revision is refused by this exchange''s negative list'
            THEN 'local_policy'
        ELSE 'exchange'
    END
WHERE state = 'suspended';

ALTER TABLE products ADD CONSTRAINT products_suspension_has_cause
    CHECK ((state = 'suspended') = (suspended_by IS NOT NULL));
