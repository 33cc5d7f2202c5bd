-- Disputes (issue 21). The disputes room owns every table here: a party's claim over a trade,
-- its transitions (each also an outbox event dx.dispute.<state>), its evidence, the reviewers'
-- approvals of a resolution (four-eyes) and the parties' signatures of an agreed one. Rows
-- change only through the room's transition table (exchange/disputes/states.py).

CREATE TABLE disputes (
    id                uuid PRIMARY KEY,
    trade_id          uuid NOT NULL,
    buyer_org_id      uuid NOT NULL,
    seller_org_id     uuid NOT NULL,
    claimant          text NOT NULL CHECK (claimant IN ('buyer', 'seller')),
    reason            text NOT NULL CHECK (reason IN ('not_delivered', 'not_as_described',
                          'quality_below_report', 'over_metered', 'terms_breach_by_buyer',
                          'other')),
    claimed_fen       bigint NOT NULL CHECK (claimed_fen >= 0),
    held_fen          bigint NOT NULL CHECK (held_fen >= 0),   -- escrow for the trade at open
    metered           boolean NOT NULL,
    periods           integer[] NOT NULL DEFAULT '{}',          -- over_metered: the periods
    statement         text NOT NULL,
    state             text NOT NULL CHECK (state IN ('opened', 'awaiting_response',
                          'under_review', 'resolved', 'settled_by_agreement', 'escalated',
                          'closed')),
    respond_by        timestamptz NOT NULL,
    response          text,
    responded_at      timestamptz,
    acceptance_due    timestamptz NOT NULL,                     -- the trade's, at open
    grants_suspended  boolean NOT NULL,
    four_eyes         boolean NOT NULL,
    resolution        jsonb,
    resolution_digest text,
    resolution_seq    bigint,                                   -- its ledger entry
    resolution_note   text,
    resolved_by       text,                                     -- actor, "agreement" or an award
    money             jsonb,                                    -- settlement's outcome
    escalation_forum  text,
    escalation_note   text,
    escalated_at      timestamptz,
    award_sha256      text CHECK (award_sha256 ~ '^[0-9a-f]{64}$'),
    opened_by         text NOT NULL,
    opened_at         timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    closed_at         timestamptz,
    version           integer NOT NULL DEFAULT 1,
    CHECK ((state = 'closed') = (closed_at IS NOT NULL)),
    CHECK (reason = 'over_metered' OR periods = '{}')
);
-- One open dispute per trade (the service names the open one; this is the backstop).
CREATE UNIQUE INDEX disputes_one_open ON disputes (trade_id) WHERE state <> 'closed';
CREATE INDEX disputes_by_buyer ON disputes (buyer_org_id, opened_at DESC);
CREATE INDEX disputes_by_seller ON disputes (seller_org_id, opened_at DESC);
CREATE INDEX disputes_by_state ON disputes (state, opened_at DESC);
-- The respondent's deadline sweep.
CREATE INDEX disputes_awaiting ON disputes (respond_by) WHERE state = 'awaiting_response';

CREATE TABLE dispute_transitions (
    dispute_id  uuid NOT NULL REFERENCES disputes (id),
    seq         integer NOT NULL,
    from_state  text,
    action      text NOT NULL,
    to_state    text NOT NULL,
    actor       text NOT NULL,
    at          timestamptz NOT NULL,
    request_id  text,
    PRIMARY KEY (dispute_id, seq)
);

-- Each item once per dispute (its bytes once in <state>/evidence, by SHA-256); idx is its
-- place in the bundle, the order it was registered in the ledger.
CREATE TABLE dispute_evidence (
    dispute_id       uuid NOT NULL REFERENCES disputes (id),
    idx              integer NOT NULL CHECK (idx >= 0),
    sha256           text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    kind             text NOT NULL,
    name             text NOT NULL,
    media_type       text NOT NULL,
    size             bigint NOT NULL CHECK (size >= 0),
    submitter        text NOT NULL CHECK (submitter IN ('buyer', 'seller', 'exchange', 'staff')),
    submitter_org_id uuid,
    submitted_by     text NOT NULL,
    submitted_at     timestamptz NOT NULL,
    ledger_seq       bigint NOT NULL,
    PRIMARY KEY (dispute_id, sha256),
    UNIQUE (dispute_id, idx)
);

-- A reviewer's approval of a resolution (four-eyes: two distinct reviewers, one digest).
CREATE TABLE dispute_approvals (
    dispute_id  uuid NOT NULL REFERENCES disputes (id),
    reviewer    text NOT NULL,                  -- the reviewer's token (actor label)
    resolution  jsonb NOT NULL,
    digest      text NOT NULL,
    note        text NOT NULL,
    approved_at timestamptz NOT NULL,
    PRIMARY KEY (dispute_id, reviewer)
);

-- A party's signature of a resolution digest (its latest: a party may sign another).
CREATE TABLE dispute_signatures (
    dispute_id  uuid NOT NULL REFERENCES disputes (id),
    party       text NOT NULL CHECK (party IN ('buyer', 'seller')),
    resolution  jsonb NOT NULL,
    digest      text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('signature', 'custodial')),
    kid         text NOT NULL,
    jws         text NOT NULL,
    signed_by   text NOT NULL,
    signed_at   timestamptz NOT NULL,
    PRIMARY KEY (dispute_id, party)
);
