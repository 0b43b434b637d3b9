-- The normalizer's two statements as functions, each one round trip and one implicit
-- transaction, with plans kept for the session.
--
-- Before: the start of a batch was one statement re-planned at every batch (the work pool plans
-- for its arguments: plan_cache_mode = force_custom_plan), and its canonical transaction four
-- round trips (BEGIN, the canonical statement re-planned, the link statement, COMMIT). Each
-- function's statements are planned once per session: every one of them reads or writes rows by
-- key, taken from the batch's arrays, so the plan is an index probe per row however the tables'
-- statistics say (sequential scans and hash and merge joins off, as for the linker in 0018).
-- The statements are those of sql/queries/normalize.sql before this migration; the ledger and
-- canonical rows written are the same.

-- One new attempt per record, the stage state 'running', in one statement so a batch's starts
-- commit together. Returns each record's attempt number and whether a canonical row already
-- exists (a redelivery or a replay: nothing left to do but acknowledge).
CREATE FUNCTION normalize_start(
    p_records uuid[], p_correlation_ids text[], p_event_versions text[], p_event_ids text[],
    p_topics text[], p_partitions int[], p_offsets bigint[], p_pipeline text
)
RETURNS TABLE (record_id uuid, attempt_no integer, canonical boolean)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT * FROM unnest(p_records, p_correlation_ids, p_event_versions, p_event_ids,
                             p_topics, p_partitions, p_offsets)
            AS t(record_id, correlation_id, event_version, event_id, kafka_topic,
                 kafka_partition, kafka_offset)
    ), state AS (
        INSERT INTO processing_stage_state AS s
            (record_id, pipeline, status, attempt_count, correlation_id, event_version, event_id,
             kafka_topic, kafka_partition, kafka_offset)
        SELECT i.record_id, p_pipeline, 'running', 1, i.correlation_id, i.event_version,
               i.event_id, i.kafka_topic, i.kafka_partition, i.kafka_offset
        FROM input i
        ORDER BY i.record_id
        ON CONFLICT (record_id, pipeline) DO UPDATE SET
            status = 'running',
            attempt_count = s.attempt_count + 1,
            last_started_at = now(),
            updated_at = now(),
            finished_at = NULL,
            correlation_id = EXCLUDED.correlation_id,
            event_version = EXCLUDED.event_version,
            event_id = EXCLUDED.event_id,
            kafka_topic = EXCLUDED.kafka_topic,
            kafka_partition = EXCLUDED.kafka_partition,
            kafka_offset = EXCLUDED.kafka_offset
        RETURNING s.record_id, s.attempt_count
    ), attempts AS (
        INSERT INTO processing_attempts
            (record_id, pipeline, attempt_no, status, kafka_topic, kafka_partition, kafka_offset)
        SELECT st.record_id, p_pipeline, st.attempt_count, 'started', i.kafka_topic,
               i.kafka_partition, i.kafka_offset
        FROM state st JOIN input i ON i.record_id = st.record_id
    )
    SELECT st.record_id, st.attempt_count,
           EXISTS (SELECT 1 FROM canonical_records c WHERE c.record_id = st.record_id)
    FROM state st;
END
$$;

-- The canonical transaction: canonical rows (first writer wins), manifest 'canonicalized',
-- attempts and stage state 'succeeded' (records already canonical only close their ledger
-- rows), then the new records linked to persons (link_records, 0015 and 0016) when
-- p_link_records is not empty. One statement: the rows and their persons commit together.
CREATE FUNCTION normalize_commit(
    p_records uuid[], p_attempt_nos int[], p_sources text[], p_raw_object_keys text[],
    p_raw_sha256s text[], p_normalized jsonb[], p_ingested_at timestamptz[],
    p_correlation_ids text[], p_event_versions text[], p_record_kinds text[],
    p_schema_hints text[], p_already_canonical boolean[], p_pipeline text,
    p_link_records uuid[], p_link_owners uuid[], p_link_rules text[], p_link_tokens bytea[]
)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
BEGIN
    WITH input AS (
        SELECT * FROM unnest(p_records, p_attempt_nos, p_sources, p_raw_object_keys,
                             p_raw_sha256s, p_normalized, p_ingested_at, p_correlation_ids,
                             p_event_versions, p_record_kinds, p_schema_hints,
                             p_already_canonical)
            AS t(record_id, attempt_no, source, raw_object_key, raw_sha256, normalized,
                 ingested_at, correlation_id, event_version, record_kind, schema_hint,
                 already_canonical)
    ), canon AS (
        INSERT INTO canonical_records
            (record_id, source, raw_object_key, raw_sha256, normalized, ingested_at,
             normalized_at, correlation_id, event_version, record_kind, schema_hint)
        SELECT i.record_id, i.source, i.raw_object_key, i.raw_sha256, i.normalized,
               i.ingested_at, now(), i.correlation_id, i.event_version, i.record_kind,
               i.schema_hint
        FROM input i
        WHERE NOT i.already_canonical
        ORDER BY i.record_id
        ON CONFLICT (record_id) DO NOTHING
        RETURNING canonical_records.record_id
    ), manifest AS (
        UPDATE raw_object_manifest m
        SET state = 'canonicalized', updated_at = now()
        FROM input i
        WHERE m.record_id = i.record_id AND m.state <> 'canonicalized'
    ), attempts AS (
        UPDATE processing_attempts a
        SET status = 'succeeded', ended_at = now(),
            result = jsonb_build_object('canonical_row', CASE WHEN c.record_id IS NULL
                                                             THEN 'existing' ELSE 'inserted' END)
        FROM input i LEFT JOIN canon c ON c.record_id = i.record_id
        WHERE a.record_id = i.record_id AND a.pipeline = p_pipeline
          AND a.attempt_no = i.attempt_no
    )
    UPDATE processing_stage_state s
    SET status = 'succeeded', finished_at = now(), updated_at = now(),
        last_error_type = NULL, last_error_message = NULL, last_error_stage = NULL
    FROM input i
    WHERE s.record_id = i.record_id AND s.pipeline = p_pipeline;
    IF cardinality(p_link_records) > 0 THEN
        PERFORM link_records(p_link_records, p_link_owners, p_link_rules, p_link_tokens);
    END IF;
END
$$;
