"""dataex exchange: the platform every part stands on, and the listing service."""
