"""Listings: products, revisions, submission, certificates."""
