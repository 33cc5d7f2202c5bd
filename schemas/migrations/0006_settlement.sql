-- Settlement: accounts, movements of zero-sum postings, settlement trades, the registration
-- ledger (RFC 6962 Merkle tree with signed tree heads), dead letters, fee schedules.

-- Accounts. Balances are signed bigint fen; the code keeps them equal to the sum of their
-- postings (checked by `dataex ledger verify` and the tests). Only the external clearing
-- account may go below zero: it mirrors money that came in from (or went out to) the bank side.
CREATE TABLE accounts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id     uuid REFERENCES organisations (id),  -- NULL: the exchange's own accounts
    kind       text NOT NULL CHECK (kind IN ('available', 'escrow', 'fee_revenue', 'clearing')),
    balance    bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (org_id, kind),
    CHECK ((org_id IS NULL) = (kind IN ('fee_revenue', 'clearing'))),
    CONSTRAINT accounts_not_negative CHECK (kind = 'clearing' OR balance >= 0)
);

-- A movement is one business step (a deposit, a withdrawal, a trade's reserve / post / void);
-- its postings sum to zero. Each trade step and each external reference happens once.
CREATE TABLE movements (
    id           uuid PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('deposit', 'withdrawal', 'reserve', 'post', 'void')),
    trade_id     uuid,
    external_ref text,
    org_id       uuid,                      -- whose step (postings name the accounts)
    amount_fen   bigint NOT NULL CHECK (amount_fen > 0),
    request_id   text,
    created_at   timestamptz NOT NULL,
    UNIQUE (trade_id, kind),
    UNIQUE (kind, external_ref),
    CHECK ((trade_id IS NULL) = (kind IN ('deposit', 'withdrawal'))),
    CHECK ((external_ref IS NULL) = (trade_id IS NOT NULL))
);
CREATE INDEX movements_org ON movements (org_id, created_at DESC) WHERE org_id IS NOT NULL;

CREATE TABLE postings (
    movement_id uuid NOT NULL REFERENCES movements (id),
    account_id  bigint NOT NULL REFERENCES accounts (id),
    amount_fen  bigint NOT NULL CHECK (amount_fen <> 0),  -- + credit, - debit
    PRIMARY KEY (movement_id, account_id)
);
CREATE INDEX postings_account ON postings (account_id);

-- Zero-sum, enforced by the database at commit: a movement's postings sum to zero, there are
-- at least two, and the credits equal the movement's amount (a deferred check per movement).
CREATE FUNCTION check_movement_balanced(movement uuid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    total numeric;
    credits numeric;
    n integer;
    amount bigint;
BEGIN
    SELECT coalesce(sum(p.amount_fen), 0),
           coalesce(sum(p.amount_fen) FILTER (WHERE p.amount_fen > 0), 0),
           count(*)
      INTO total, credits, n
      FROM postings p WHERE p.movement_id = movement;
    SELECT m.amount_fen INTO amount FROM movements m WHERE m.id = movement;
    IF n < 2 OR total <> 0 OR credits IS DISTINCT FROM amount THEN
        RAISE EXCEPTION 'movement % does not balance: % postings, sum % fen, credits % of % fen',
            movement, n, total, credits, amount
            USING ERRCODE = 'check_violation';
    END IF;
END
$$;
CREATE FUNCTION movement_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM check_movement_balanced(NEW.id);
    RETURN NULL;
END
$$;
-- Postings added later to a movement, or a statement leaving one unbalanced, are refused at
-- once: one set-based check per INSERT statement over the movements it touched.
CREATE FUNCTION postings_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT m.id, s.n, s.total, s.credits, m.amount_fen INTO bad
      FROM movements m
      JOIN (SELECT DISTINCT movement_id FROM new_postings) t ON t.movement_id = m.id
      CROSS JOIN LATERAL (
          SELECT count(*) AS n, sum(p.amount_fen) AS total,
                 coalesce(sum(p.amount_fen) FILTER (WHERE p.amount_fen > 0), 0) AS credits
            FROM postings p WHERE p.movement_id = m.id) s
     WHERE s.n < 2 OR s.total <> 0 OR s.credits <> m.amount_fen
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'movement % does not balance: % postings, sum % fen, credits % of % fen',
            bad.id, bad.n, bad.total, bad.credits, bad.amount_fen
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER movements_balanced AFTER INSERT ON movements
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION movement_balanced();
CREATE TRIGGER postings_balanced AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION postings_balanced();

CREATE TRIGGER movements_append_only BEFORE UPDATE OR DELETE ON movements
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER movements_no_truncate BEFORE TRUNCATE ON movements
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- The settlement state of each executed trade (trade id = contract id). The order and parties
-- are copied from the contract, which the worker checks them against in the same transaction.
CREATE TABLE settlement_trades (
    trade_id        uuid PRIMARY KEY REFERENCES trade_contracts (id),
    order_id        uuid NOT NULL,
    buyer_org_id    uuid NOT NULL,
    seller_org_id   uuid NOT NULL,
    buyer_uscc      text,
    seller_uscc     text,
    contract_digest text NOT NULL,
    product_code    text NOT NULL,
    price_fen       bigint NOT NULL CHECK (price_fen >= 0),
    fee_fen         bigint NOT NULL CHECK (fee_fen >= 0),
    state           text NOT NULL CHECK (state IN ('pending', 'reserved', 'disputed', 'failed',
                                                   'settled', 'voided')),
    reason          text,
    executed_at     timestamptz NOT NULL,
    acceptance_due  timestamptz NOT NULL,
    objection       text,
    objected_at     timestamptz,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX settlement_trades_due ON settlement_trades (acceptance_due) WHERE state = 'reserved';
CREATE INDEX settlement_trades_buyer ON settlement_trades (buyer_org_id, executed_at DESC, trade_id DESC);
CREATE INDEX settlement_trades_seller ON settlement_trades (seller_org_id, executed_at DESC, trade_id DESC);

-- Cancellation needs both parties: each party's request is a row.
CREATE TABLE trade_cancellations (
    trade_id     uuid NOT NULL REFERENCES settlement_trades (trade_id),
    party        text NOT NULL CHECK (party IN ('buyer', 'seller')),
    reason       text NOT NULL,
    requested_at timestamptz NOT NULL,
    PRIMARY KEY (trade_id, party)
);

ALTER TABLE trade_contracts DROP CONSTRAINT trade_contracts_state_check;
ALTER TABLE trade_contracts ADD CONSTRAINT trade_contracts_state_check
    CHECK (state IN ('awaiting_signatures', 'executed', 'cancelled', 'expired', 'unfunded'));

-- The registration ledger (登记): one entry per settlement step, leaf index = seq (from 0),
-- entry = RFC 8785 canonical JSON (it carries its own seq and the previous entry's leaf hash),
-- leaf_hash = SHA-256(0x00 || entry). Appends are serialised by an advisory lock.
CREATE TABLE ledger_entries (
    seq        bigint PRIMARY KEY CHECK (seq >= 0),
    trade_id   uuid NOT NULL,
    step       text NOT NULL,
    entry      bytea NOT NULL,
    leaf_hash  bytea NOT NULL CHECK (length(leaf_hash) = 32),
    created_at timestamptz NOT NULL
);
CREATE INDEX ledger_entries_trade ON ledger_entries (trade_id, seq);
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Signed tree heads: (size, root, time) as a compact JWS by the exchange's key.
CREATE TABLE ledger_tree_heads (
    tree_size  bigint PRIMARY KEY CHECK (tree_size > 0),
    root_hash  bytea NOT NULL CHECK (length(root_hash) = 32),
    signed_at  timestamptz NOT NULL,
    kid        text NOT NULL,
    jws        text NOT NULL
);
CREATE TRIGGER ledger_tree_heads_append_only BEFORE UPDATE OR DELETE ON ledger_tree_heads
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER ledger_tree_heads_no_truncate BEFORE TRUNCATE ON ledger_tree_heads
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Events the settlement worker gave up on (after bounded redelivery, or undecodable): what
-- staff see; the message also goes to the dead-letter subject.
CREATE TABLE settlement_failures (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_seq  bigint,
    subject     text NOT NULL,
    event_id    text,
    trade_id    uuid,
    deliveries  integer NOT NULL,
    error       text NOT NULL,
    payload     bytea NOT NULL,
    failed_at   timestamptz NOT NULL
);
CREATE INDEX settlement_failures_at ON settlement_failures (failed_at DESC, id DESC);

-- Fee schedules: basis points of the price with a minimum, per plan or the default; the
-- newest row in effect wins; rows are never changed (a new row supersedes).
CREATE TABLE fee_schedules (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id     uuid REFERENCES products (id),
    plan_id        text,
    bps            integer NOT NULL CHECK (bps BETWEEN 0 AND 10000),
    min_fen        bigint NOT NULL CHECK (min_fen >= 0),
    effective_from timestamptz NOT NULL,
    created_at     timestamptz NOT NULL,
    created_by     text NOT NULL,
    CHECK ((product_id IS NULL) = (plan_id IS NULL))
);
CREATE INDEX fee_schedules_scope ON fee_schedules (product_id, plan_id, effective_from DESC, id DESC);
CREATE TRIGGER fee_schedules_append_only BEFORE UPDATE OR DELETE ON fee_schedules
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
