"""What the processes count, for ``GET /metrics``: every metric a process records, in one place.

Each process records into prometheus_client's metrics here. Under `dataex up` the parts run with
``PROMETHEUS_MULTIPROC_DIR`` set (`exchange.platform.exposition`), so each process's values go to
files in that folder and ``/metrics`` sums them, whichever API worker answers: a counter of a
process that died still counts, so totals never go back. Without it (a single process, the
tests) the values live in this process's default registry.

Only what happens in a process is recorded here (counters and histograms). Levels that the
database or JetStream know (queue depth, outbox lag, ledger size, failures on record) are read
at each scrape instead (`exchange.platform.exposition`), which is right however many processes
run and needs no gauge in these files.

Labels are few and bounded: an HTTP route is its template (``/v1/orders/{order_id}``),
never the raw path; a policy rule is a rule id of the lists.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Histogram

# Seconds: from a cached read (a few ms) to a slow order under load (~1 s) and timeouts.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Seconds from a trade's execution to its registration, or from an event's write to its
# publication: sub-second normally, minutes after an outage.
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

HTTP_REQUESTS = Counter(
    "dataex_http_requests",
    "HTTP requests answered by the API, by method, route template and status",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "dataex_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by method and route template",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
ORDERS_PLACED = Counter(
    "dataex_orders_placed",
    "Orders placed (replays of an Idempotency-Key not counted), by the state they were placed in",
    ["state"],
)
ORDER_GROUP_SIZE = Histogram(
    "dataex_order_group_size",
    "Orders placed in one transaction (group commit; 1: an order alone)",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
POLICY_DECISIONS = Counter(
    "dataex_policy_decisions",
    "Policy decisions recorded about listings and orders, by subject and outcome",
    ["subject", "outcome"],
)
POLICY_RULE_HITS = Counter(
    "dataex_policy_rule_hits",
    "Rules that fired in recorded policy decisions, by subject, the decision's outcome and rule",
    ["subject", "outcome", "rule"],
)
OUTBOX_PUBLISHED = Counter(
    "dataex_outbox_events_published", "Events the relay published from the outbox to JetStream"
)
OUTBOX_PUBLISH_LAG = Histogram(
    "dataex_outbox_publish_lag_seconds",
    "Time from an event's write to the outbox to its publication by the relay",
    buckets=LAG_BUCKETS,
)
SETTLEMENT_BATCH_SIZE = Histogram(
    "dataex_settlement_batch_size",
    "Executed-trade events settled in one transaction by the settlement worker",
    buckets=(1, 10, 50, 100, 250, 500, 1000),
)
SETTLEMENT_LAG = Histogram(
    "dataex_settlement_lag_seconds",
    "Time from a trade's execution to its registration (reserved or failed) in the ledger",
    buckets=LAG_BUCKETS,
)
SETTLEMENT_REGISTERED = Counter(
    "dataex_settlement_trades_registered",
    "Executed trades registered by the settlement worker, by outcome (reserved, failed)",
    ["outcome"],
)
CONSUMER_REDELIVERIES = Counter(
    "dataex_consumer_redeliveries",
    "JetStream messages received again (delivered more than once), by consumer",
    ["consumer"],
)
CONSUMER_DEAD_LETTERS = Counter(
    "dataex_consumer_dead_letters",
    "JetStream messages given up on (dead-lettered or dropped), by consumer",
    ["consumer"],
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_DURATION.labels(method, route).observe(seconds)


def count_decision(subject: str, outcome: str, rules: Iterable[str]) -> None:
    """A recorded policy decision about a ``subject`` ("listing", "order") and its rules."""
    POLICY_DECISIONS.labels(subject, outcome).inc()
    for rule in rules:
        POLICY_RULE_HITS.labels(subject, outcome, rule).inc()


def count_deliveries(consumer: str, delivered: Iterable[int]) -> None:
    """Messages a consumer fetched, by how many times each was delivered."""
    again = sum(1 for times in delivered if times > 1)
    if again:
        CONSUMER_REDELIVERIES.labels(consumer).inc(again)
