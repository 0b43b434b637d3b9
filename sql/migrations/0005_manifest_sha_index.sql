-- Reconcile: a raw object left by a crash whose partner retried has the same bytes as the record
-- accepted on the retry; finding that record by (source, sha256) keeps the orphan from becoming a
-- second canonical row for one submission.
CREATE INDEX raw_object_manifest_source_sha_idx ON raw_object_manifest (source, sha256);
