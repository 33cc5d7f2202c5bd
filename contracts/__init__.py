"""Policy engine, orders, matching, standard contracts, and the transactional outbox."""
