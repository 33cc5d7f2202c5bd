-- No executed trade left behind: the settlement room's reconciler (settlement/reconciler.py)
-- finds executed trades that have no settlement outcome some time after their
-- dx.trade.executed was published, and publishes the event again.

-- The platform's part: the outbox indexes its dx.trade.executed events by when they were
-- published, so a room can read those published in a window without reading every event
-- (`exchange.platform.outbox.published`). Partial: executed trades are a fraction of the
-- events; the pattern holds for any DATAEX_SUBJECT_PREFIX.
CREATE INDEX outbox_trade_executed ON outbox (published_at, id)
    WHERE subject LIKE '%.trade.executed';

-- The settlement room's part. One row: every executed event published before checked_until
-- has been checked (NULL: none yet), and how many executed events were published again.
CREATE TABLE settlement_reconciler (
    id                boolean PRIMARY KEY DEFAULT true CHECK (id),
    checked_until     timestamptz,
    republished_total bigint NOT NULL DEFAULT 0 CHECK (republished_total >= 0),
    ran_at            timestamptz
);

-- Executed trades found without a settlement outcome past the bound, while they have none:
-- the outbox event to publish again, and when and how often it was.
CREATE TABLE settlement_overdue (
    trade_id       uuid PRIMARY KEY,
    event_id       uuid NOT NULL,
    published_at   timestamptz NOT NULL,
    found_at       timestamptz NOT NULL,
    republished_at timestamptz,
    attempts       integer NOT NULL DEFAULT 0 CHECK (attempts >= 0)
);
