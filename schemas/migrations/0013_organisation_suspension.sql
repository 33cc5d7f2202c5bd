-- Staff may suspend an organisation (a complaint, a regulator's request): while suspended it
-- receives no data — its grants, as buyer or seller, are suspended through the
-- dx.organisation.* events — and no delivery token is issued to it.
ALTER TABLE organisations ADD COLUMN suspended_at timestamptz;
ALTER TABLE organisations ADD COLUMN suspended_reason text;
ALTER TABLE organisations ADD CONSTRAINT organisations_suspension_has_reason
    CHECK ((suspended_at IS NULL) = (suspended_reason IS NULL));
