"""Organisations, their unified social credit codes, and API tokens."""
