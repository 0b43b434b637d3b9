-- One place that puts events into the outbox: ingest, replay and reconcile all call this, so the
-- row they write (and the NOTIFY its statement trigger sends at commit) is the same everywhere.
CREATE FUNCTION outbox_enqueue(p_topics text[], p_keys text[], p_payloads jsonb[])
RETURNS integer
LANGUAGE sql VOLATILE AS $$
    WITH added AS (
        INSERT INTO outbox_events (topic, key, payload)
        SELECT * FROM unnest(p_topics, p_keys, p_payloads)
        RETURNING 1
    )
    SELECT count(*)::integer FROM added
$$;
