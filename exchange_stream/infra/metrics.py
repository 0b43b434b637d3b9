"""Every Prometheus metric of the service, declared in one place.

Labels carry routes, statuses, kinds, stages and error types only: never a value from a record.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

ingest_requests_total = Counter(
    "ingest_requests_total",
    "HTTP ingest and tokenize requests by route and response status.",
    ["route", "status"],
    registry=REGISTRY,
)
ingest_latency_seconds = Histogram(
    "ingest_latency_seconds",
    "Time from request received to response, by route.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
ingest_backlog = Gauge(
    "ingest_backlog",
    "Accepted records the normalizer has not taken yet (outbox pending + the group's lag on the "
    "ingested topics), as last sampled by this worker; ingest sheds over INGEST_MAX_BACKLOG.",
    registry=REGISTRY,
)

ingest_shed_total = Counter(
    "ingest_shed_total",
    "Ingest requests answered 503 because the normalizer's backlog was over its limit.",
    ["route"],
    registry=REGISTRY,
)

outbox_pending = Gauge(
    "outbox_pending",
    "Outbox rows not yet published, as last seen by this worker's relay.",
    registry=REGISTRY,
)
outbox_published_total = Counter(
    "outbox_published_total", "Outbox rows published to Kafka by this worker.", registry=REGISTRY
)
outbox_publish_failures_total = Counter(
    "outbox_publish_failures_total",
    "Outbox publish batches that failed (rows stay pending and are retried).",
    registry=REGISTRY,
)
outbox_row_failures_total = Counter(
    "outbox_row_failures_total",
    "Outbox rows whose publish failed on their own while Kafka answered (a topic it does not have,"
    " a message it refused), by topic: each waits for its retry while the others go out.",
    ["topic"],
    registry=REGISTRY,
)
outbox_waiting_retry = Gauge(
    "outbox_waiting_retry",
    "Pending outbox rows waiting for their next attempt after failing on their own, as last seen"
    " by this worker's relay.",
    registry=REGISTRY,
)
outbox_relay_wakeups_total = Counter(
    "outbox_relay_wakeups_total",
    "Times the idle outbox relay woke: cause notify (a commit's NOTIFY) or poll (the safety net).",
    ["cause"],
    registry=REGISTRY,
)
outbox_relay_latency_seconds = Histogram(
    "outbox_relay_latency_seconds",
    "Time from outbox row creation to its publish acknowledgement.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
raw_store_calls_total = Counter(
    "raw_store_calls_total",
    "Calls of the raw store: put and delete (S3 requests), get (an S3 GET) and get_cached (a"
    " body still in the worker's recent bodies, no request).",
    ["call"],
    registry=REGISTRY,
)
# Bound once: the hot path increments a child, not a label lookup.
RAW_STORE_CALLS = {
    c: raw_store_calls_total.labels(c) for c in ("put", "get", "get_cached", "delete")
}
normalizer_records_total = Counter(
    "normalizer_records_total",
    "Records finished by the normalizer: outcome canonical or duplicate, by kind and hint.",
    ["outcome", "record_kind", "schema_hint"],
    registry=REGISTRY,
)
normalizer_failures_total = Counter(
    "normalizer_failures_total",
    "Failed normalizer attempts by stage and error type (retried or dead-lettered).",
    ["stage", "error_type"],
    registry=REGISTRY,
)
dlq_published_total = Counter(
    "dlq_published_total",
    "Events published to a DLQ topic, by stage and error type.",
    ["stage", "error_type"],
    registry=REGISTRY,
)
normalizer_end_to_end_seconds = Histogram(
    "normalizer_end_to_end_seconds",
    "Time from the event's occurred_at to its canonical row's commit.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
    registry=REGISTRY,
)
normalizer_batch_size = Histogram(
    "normalizer_batch_size",
    "Messages per normalizer batch.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500),
    registry=REGISTRY,
)
normalizer_batch_seconds = Histogram(
    "normalizer_batch_seconds",
    "Time one normalizer batch took, from its events in hand to every record canonical or "
    "dead-lettered.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
normalizer_batch_reruns_total = Counter(
    "normalizer_batch_reruns_total",
    "Normalizer batches run again after failing on an unforeseen error (a bug or an error the "
    "normalizer does not classify), by error type.",
    ["error_type"],
    registry=REGISTRY,
)
normalizer_consumer_lag = Gauge(
    "normalizer_consumer_lag",
    "Messages behind the partition's high watermark, as of the last batch.",
    ["topic", "partition"],
    registry=REGISTRY,
)
normalizer_paused = Gauge(
    "normalizer_paused",
    "1 while the normalizer waits for this dependency to answer again (an outage), else 0.",
    ["dependency"],
    registry=REGISTRY,
)
normalizer_pauses_total = Counter(
    "normalizer_pauses_total",
    "Times the normalizer paused because a dependency did not answer.",
    ["dependency"],
    registry=REGISTRY,
)
read_audit_rows_total = Counter(
    "read_audit_rows_total",
    "Read audit rows written (read/audit.py).",
    registry=REGISTRY,
)
read_audit_dropped_total = Counter(
    "read_audit_dropped_total",
    "Read audit rows dropped because Postgres stayed away while too many waited.",
    registry=REGISTRY,
)
graphql_requests_total = Counter(
    "graphql_requests_total",
    "Read API requests by response status.",
    ["status"],
    registry=REGISTRY,
)
graphql_latency_seconds = Histogram(
    "graphql_latency_seconds",
    "Time from a read API request received to its response.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
graphql_sql_statements = Histogram(
    "graphql_sql_statements",
    "SQL statements one read API request cost (its lists are batched, never one per item).",
    buckets=(0, 1, 2, 3, 4, 5, 8, 12, 20, 50),
    registry=REGISTRY,
)
event_loop_lag_seconds = Histogram(
    "event_loop_lag_seconds",
    "How late a 50 ms timer fired on the worker's event loop: the longest slice of work that "
    "held the loop meanwhile (or a wait for a core).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
data_quality_issues = Gauge(
    "data_quality_issues",
    "Rows found by the last full data-quality job run in this process, by check.",
    ["check"],
    registry=REGISTRY,
)
data_quality_checked_at = Gauge(
    "data_quality_checked_at_seconds",
    "Unix time of the last full data-quality job run in this process.",
    registry=REGISTRY,
)
readiness_checks_total = Counter(
    "readiness_checks_total",
    "Dependency checks made by /readyz, by dependency and outcome.",
    ["dependency", "outcome"],
    registry=REGISTRY,
)


def render() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)
