"""The one test kit: what test modules share, so that no test module imports another.

- fixtures: the pytest plugin (registered by tests/conftest.py): servers, settings, clock,
  pool, client, admin_token, market, trade.
- servers: the run's databases and streams (create, clean, drop; migrate and provision).
- api: bearer headers, organisations and tokens over HTTP, problem details.
- documents: policy evaluation documents and products to list.
- market: builders for sellers, reviewers, buyers, listed products, offers, orders and
  executed trades.
- settlement: a settlement worker in-process; the fault runs and their invariants.
- recognition: a peer exchange the test holds the keys of; two real exchanges.
- access: the route table and the access matrix.
- processes: the repository root, free ports, `dataex` as a subprocess.
- gateway: API grants through the grant service, a recording upstream, the data gateway
  in-process or as processes, the relay once.
- rfc9421: an HTTP Message Signatures verifier written from the RFC, independent of the code.
"""
