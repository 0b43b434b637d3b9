-- The ingest statement in one round trip: take the key's transaction-scoped advisory lock, look
-- the key up, and write the request's rows only if the key is new. Each statement of a PL/pgSQL
-- function takes its own snapshot, so the lookup, which runs once the lock is granted, sees a
-- request with the same key that committed while this one waited (a single SQL statement's
-- snapshot, taken before the lock, would not).
-- inserted = false: the key was stored before; nothing was written and its hash and response are
-- returned for the caller to compare. idempotency_lock_and_lookup (0002) stays for workers of the
-- previous release during a rolling upgrade.
CREATE FUNCTION ingest_once(
    p_record_id uuid, p_source text, p_bucket text, p_object_key text, p_sha256 text,
    p_size_bytes bigint, p_topic text, p_event jsonb, p_correlation_id text, p_actor text,
    p_audit jsonb, p_key text, p_response jsonb, p_route text
)
RETURNS TABLE (inserted boolean, request_sha256 text, response jsonb)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(p_key));
    RETURN QUERY
        SELECT false, k.request_sha256, k.response FROM idempotency_keys k WHERE k.key = p_key;
    IF FOUND THEN
        RETURN;
    END IF;
    -- The manifest is 'enqueued' at once: the outbox row commits with it.
    INSERT INTO raw_object_manifest
        (record_id, source, bucket, object_key, sha256, size_bytes, state)
    VALUES (p_record_id, p_source, p_bucket, p_object_key, p_sha256, p_size_bytes, 'enqueued');
    INSERT INTO audit_log (correlation_id, actor, action, entity_type, entity_id, status, details)
    VALUES (p_correlation_id, p_actor, 'ingest', 'record', p_record_id::text, 'accepted', p_audit);
    INSERT INTO idempotency_keys (key, request_sha256, response, route, record_id)
    VALUES (p_key, p_sha256, p_response, p_route, p_record_id);
    PERFORM outbox_enqueue(ARRAY[p_topic], ARRAY[p_record_id::text], ARRAY[p_event]);
    RETURN QUERY SELECT true, p_sha256, p_response;
END;
$$;
