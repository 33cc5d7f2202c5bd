"""Benchmarks, synthetic seeding and load clients: tools, not parts of the exchange.

``dataex bench …`` and ``dataex seed`` dispatch here (from ``exchange/cli.py``, inside the
command's function); no module of ``exchange``, ``contracts`` or ``settlement`` imports this
package. It stands at the composition root's level, so it may import theirs (and
``exchange.runtime``).
"""
