"""The stages a record travels through: ingest, outbox relay, normalize (with its DLQ), agents."""
