-- Statements run inside functions keep their plans for the session (pg_stat_statements with
-- track = all, bench/end_to_end.py at 200 req/s). Two did not:
--
-- outbox_enqueue was a SQL function: called from PL/pgSQL (ingest_once) it is parsed and
-- planned again at every call, 0.19 ms of the 0.38 ms ingest statement for a 0.05 ms insert.
-- As PL/pgSQL its insert is planned once per session. Same arguments, same rows, same NOTIFY.
CREATE OR REPLACE FUNCTION outbox_enqueue(p_topics text[], p_keys text[], p_payloads jsonb[])
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    added integer;
BEGIN
    INSERT INTO outbox_events (topic, key, payload)
    SELECT * FROM unnest(p_topics, p_keys, p_payloads);
    GET DIAGNOSTICS added = ROW_COUNT;
    RETURN added;
END
$$;

-- The linker runs on the normalizer's connections, which plan every statement for its arguments
-- (plan_cache_mode = force_custom_plan, infra/db.py), so each of its per-record statements was
-- planned again for every record: about half of its time. Its statements are point lookups by
-- index with sequential scans off (0018), so one generic plan per session is the right plan.
ALTER FUNCTION link_persons_of_records(uuid[], uuid[], text[], bytea[])
    SET plan_cache_mode = force_generic_plan;
