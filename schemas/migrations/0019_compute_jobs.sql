-- Compute-to-data jobs (可用不可见). The compute room owns every table here: the algorithms a
-- buyer uploads for a grant and the seller reviews, the jobs run over the grant's data, and each
-- grant's privacy budget. Rows change only through the compute room's transition table
-- (exchange/compute/states.py); every change of a job is an outbox event (dx.job.<state>).

-- One Python file and a JSON Schema of its parameters, for one grant. Only an approved hash
-- ever runs: it is the grant's allow-list.
CREATE TABLE compute_algorithms (
    grant_id      uuid NOT NULL,
    sha256        text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    source        bytea NOT NULL,
    params_schema jsonb NOT NULL,
    state         text NOT NULL CHECK (state IN ('submitted', 'approved', 'refused')),
    reason        text,
    submitted_by  text NOT NULL,               -- actor (token id) of the buyer
    submitted_at  timestamptz NOT NULL,
    decided_by    text,
    decided_at    timestamptz,
    PRIMARY KEY (grant_id, sha256),
    CHECK ((state = 'submitted') = (decided_at IS NULL))
);

-- Each job: an approved algorithm or a canonical DP query, over the grant's revision.
CREATE TABLE compute_jobs (
    id               uuid PRIMARY KEY,
    grant_id         uuid NOT NULL,
    buyer_org_id     uuid NOT NULL,
    seller_org_id    uuid NOT NULL,
    product_id       uuid NOT NULL,
    product_code     text NOT NULL,
    revision         integer NOT NULL,
    revision_digest  text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('algorithm', 'query')),
    algorithm_sha256 text,
    query            jsonb,                     -- canonical DP query (kind = query)
    params           jsonb NOT NULL,
    idempotency_key  text NOT NULL,
    request_digest   text NOT NULL,             -- the same key with another body: 422
    state            text NOT NULL CHECK (state IN ('queued', 'running', 'checking_output',
                         'succeeded', 'failed_algorithm', 'failed_platform', 'timed_out',
                         'limit_exceeded', 'output_rejected', 'cancelled')),
    limit_kind       text CHECK (limit_kind IN ('memory', 'pids', 'output', 'cpu')),
    rejection_reason text,
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    limits           jsonb NOT NULL,            -- the plan's sandbox terms, as run
    epsilon_micro    bigint NOT NULL DEFAULT 0 CHECK (epsilon_micro >= 0),
    k                integer NOT NULL CHECK (k >= 1),
    runner           text,
    queued_at        timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    cpu_ms           bigint CHECK (cpu_ms >= 0),
    exit_code        integer,
    result           jsonb,                     -- the buyer's only: never in events or metadata
    result_sha256    text,
    leases           uuid[] NOT NULL DEFAULT '{}',  -- delivery's quota leases of its CPU limit
    inputs           jsonb,                     -- {name: sha256} of the files it read
    receipt          jsonb,                     -- {receipt, digest, jws, ledger_seq} once final
    version          bigint NOT NULL DEFAULT 1,
    updated_at       timestamptz NOT NULL,
    UNIQUE (buyer_org_id, idempotency_key),
    CHECK ((kind = 'algorithm') = (algorithm_sha256 IS NOT NULL)),
    CHECK ((kind = 'query') = (query IS NOT NULL))
);
CREATE INDEX compute_jobs_grant ON compute_jobs (grant_id, queued_at DESC, id DESC);
CREATE INDEX compute_jobs_live ON compute_jobs (state, updated_at)
    WHERE state IN ('queued', 'running', 'checking_output');

-- A grant's privacy budget in micro-ε (1 ε = 1,000,000), from the plan's sandbox terms; what
-- its jobs spent never exceeds the total: the database refuses it.
CREATE TABLE compute_budgets (
    grant_id       uuid PRIMARY KEY,
    total_micro    bigint NOT NULL CHECK (total_micro >= 0),
    per_job_micro  bigint NOT NULL CHECK (per_job_micro >= 0),
    spent_micro    bigint NOT NULL DEFAULT 0 CHECK (spent_micro >= 0),
    updated_at     timestamptz NOT NULL,
    CONSTRAINT compute_budgets_within_total CHECK (spent_micro <= total_micro)
);
