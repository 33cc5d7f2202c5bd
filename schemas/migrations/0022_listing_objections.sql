-- Objections to a registration (异议登记). A third party claims rights in a listed product;
-- staff may suspend the listing until the claim is decided. The listing room owns the table:
-- a row is never deleted, and its state moves only through the room's transition table
-- (exchange/listings/states.py: registered → upheld | dismissed).
CREATE TABLE listing_objections (
    id                uuid PRIMARY KEY,
    product_id        uuid NOT NULL REFERENCES products (id),
    claimant_org_id   uuid NOT NULL REFERENCES organisations (id),
    claim             text NOT NULL CHECK (claim IN ('ownership', 'licence',
                          'personal_information', 'trade_secret', 'other')),
    statement         text NOT NULL,              -- the claimant's words: never public
    evidence_sha256   text[] NOT NULL DEFAULT '{}',
    state             text NOT NULL CHECK (state IN ('registered', 'upheld', 'dismissed')),
    registered_at     timestamptz NOT NULL,
    -- staff suspended the listing pending the decision, with this reason
    suspended_listing boolean NOT NULL DEFAULT false,
    suspension_reason text,
    suspended_at      timestamptz,
    decided_at        timestamptz,
    decision_reason   text,
    CHECK ((state = 'registered') = (decided_at IS NULL)),
    CHECK ((decided_at IS NULL) = (decision_reason IS NULL)),
    CHECK (suspended_listing = (suspended_at IS NOT NULL)),
    CHECK (suspended_listing = (suspension_reason IS NOT NULL)),
    CHECK (array_position(evidence_sha256, NULL) IS NULL)
);

-- One open objection per claimant and product.
CREATE UNIQUE INDEX listing_objections_one_open
    ON listing_objections (product_id, claimant_org_id) WHERE state = 'registered';
-- A product's objections (its public status), and the staff's list by state, oldest first.
CREATE INDEX listing_objections_by_product ON listing_objections (product_id, registered_at, id);
CREATE INDEX listing_objections_by_state ON listing_objections (state, registered_at, id);

-- A product an objection keeps suspended says so: `suspended_by` = 'objection', so dismissing
-- the objection reinstates only a suspension objections made, never one staff decided apart.
ALTER TABLE products DROP CONSTRAINT products_suspended_by_check;
ALTER TABLE products ADD CONSTRAINT products_suspended_by_check
    CHECK (suspended_by IN ('exchange', 'origin', 'distrust', 'local_policy', 'objection'));
