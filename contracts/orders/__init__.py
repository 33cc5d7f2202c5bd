"""Orders: idempotent placement, matching against the seller's offer, policy at order time."""
