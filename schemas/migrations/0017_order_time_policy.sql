-- Order-time policy (issue 18): what the cross-border counts add up, and the facts staff record
-- for route steps 2-3 and NEG-08. One file with a part per room (one number was free); each
-- part changes only its room's tables.

-- The orders room. The individuals an order adds to its seller's cross-border totals for the
-- year once executed (policy-rules.md, route: N and S count personal-information subjects):
-- its declared pi_subject_count when it exports identifiable personal information (present
-- and not anonymised), else 0; set to 0 when its trade is voided or fails before any delivery.
ALTER TABLE orders ADD COLUMN counted_pi_subjects bigint NOT NULL DEFAULT 0
    CHECK (counted_pi_subjects >= 0 AND counted_pi_subjects <= pi_subject_count);
-- Orders placed before: the order's own policy decision says what it exported (its document's
-- product); an unfunded contract never delivered; a trade settlement voided with nothing
-- served under any of its grants delivered nothing either.
UPDATE orders o SET counted_pi_subjects = o.pi_subject_count
FROM policy_subjects s JOIN policy_decisions d ON d.id = s.latest_decision
WHERE s.subject_type = 'order' AND s.subject_id = o.id::text AND o.cross_border
  AND (d.document #>> '{product,personal_info,present}')::boolean
  AND d.document #>> '{product,personal_info,state}' <> 'anonymised'
  AND NOT EXISTS (SELECT 1 FROM trade_contracts c WHERE c.order_id = o.id AND c.state = 'unfunded')
  AND NOT EXISTS (
      SELECT 1 FROM trade_contracts c JOIN settlement_trades t ON t.trade_id = c.id
      WHERE c.order_id = o.id AND t.state IN ('voided', 'failed')
        AND NOT EXISTS (SELECT 1 FROM grants g JOIN usage_records u ON u.grant_id = g.id
                        WHERE g.trade_id = t.trade_id));

-- The identity room. What staff record about an organisation as a data exporter (policy
-- attributes exporter.ciio, exporter.exemption, exporter.ftz_exempt), through a four-eyes
-- review case (exchange/review/proposals.py).
ALTER TABLE organisations ADD COLUMN ciio boolean NOT NULL DEFAULT false;
ALTER TABLE organisations ADD COLUMN export_exemption text CHECK (export_exemption IN (
    'contract_with_individual', 'cross_border_hr', 'emergency', 're_export'));
ALTER TABLE organisations ADD COLUMN ftz_exempt boolean NOT NULL DEFAULT false;

-- The review room. Besides listings and orders, cases that decide a staff proposal (a
-- product's legal prohibition, an organisation's exporter status): the proposal is the case's,
-- two reviewers approve it, and at most one is open per subject and kind.
ALTER TABLE review_cases DROP CONSTRAINT review_cases_kind_check;
ALTER TABLE review_cases ADD CONSTRAINT review_cases_kind_check
    CHECK (kind IN ('listing', 'order', 'legal_prohibition', 'exporter_status'));
ALTER TABLE review_cases ADD COLUMN proposal jsonb;
ALTER TABLE review_cases ADD CONSTRAINT review_cases_proposal_kind
    CHECK ((proposal IS NOT NULL) = (kind IN ('legal_prohibition', 'exporter_status')));
CREATE UNIQUE INDEX review_cases_one_open_proposal ON review_cases (kind, subject_id)
    WHERE state = 'open' AND proposal IS NOT NULL;
