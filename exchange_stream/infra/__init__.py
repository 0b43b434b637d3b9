"""Adapters to the outside world: configuration, Postgres, SQL, S3, Kafka, contracts, metrics, logs.

Imports ``core`` only; knows nothing of stages or operations.
"""
