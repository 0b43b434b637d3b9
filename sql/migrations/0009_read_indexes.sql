-- The read API's lookups (docs/API.md, GraphQL): a patient's records of one kind in receipt
-- order, and pages of all records, or of one source's, in receipt order. The source index
-- replaces the plain one of 0001, which it covers.
CREATE INDEX canonical_records_patient_idx
    ON canonical_records ((normalized ->> 'patient_token'), record_kind, ingested_at, record_id);
CREATE INDEX canonical_records_received_idx ON canonical_records (ingested_at, record_id);
CREATE INDEX canonical_records_source_received_idx
    ON canonical_records (source, ingested_at, record_id);
DROP INDEX canonical_records_source_idx;
