"""Computation on a product's data inside the exchange: the buyer sees only results."""
