"""Platform modules: settings, logging, errors, database, NATS, clock.

They import nothing else of ours.
"""
