-- Four-eyes for arbitration awards. Recording an escalated dispute's award moves the money as
-- a reviewer's resolution does, so at or above DATAEX_DISPUTE_FOUR_EYES_FEN it takes two admins
-- too: the first admin's award waits here as a proposal, and a second, different admin naming
-- the same resolution and the same award document records it (maker-checker on every manual
-- movement of money). Both stages keep their approvals in one table, told apart by stage, so a
-- review approval never counts towards an award nor an award proposal towards a review, and one
-- token may take part in both stages of a dispute (an admin is a reviewer too). Rows written
-- before this are the reviewers' approvals.
ALTER TABLE dispute_approvals
    ADD COLUMN stage text NOT NULL DEFAULT 'review' CHECK (stage IN ('review', 'award')),
    -- The award's document (an evidence item of kind award): the second admin must name the
    -- same one, since the same outcome on another document is another award.
    ADD COLUMN document_sha256 text CHECK (document_sha256 ~ '^[0-9a-f]{64}$'),
    ADD CONSTRAINT dispute_approvals_award_document
        CHECK ((stage = 'award') = (document_sha256 IS NOT NULL));

-- One approval per token and stage: the PRIMARY KEY it replaces made a reviewer's review
-- approval block the same token's award proposal.
ALTER TABLE dispute_approvals
    DROP CONSTRAINT dispute_approvals_pkey,
    ADD PRIMARY KEY (dispute_id, stage, reviewer);
