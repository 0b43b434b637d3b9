-- Ingest: take the per-key advisory lock, then look the key up. In PL/pgSQL each statement gets
-- a fresh snapshot, so the lookup sees a row committed by the previous holder of the lock; as one
-- plain SQL statement the snapshot would predate the lock. One round trip for both.
CREATE FUNCTION idempotency_lock_and_lookup(p_key text)
RETURNS TABLE (request_sha256 text, response jsonb)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(p_key));
    RETURN QUERY
        SELECT k.request_sha256, k.response FROM idempotency_keys k WHERE k.key = p_key;
END;
$$;

-- Wake the outbox relays at commit (LISTEN outbox_events) instead of making them poll.
-- Statement-level, and NOTIFY folds duplicates within a transaction: one signal per commit.
CREATE FUNCTION outbox_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_events_notify
    AFTER INSERT ON outbox_events
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_events_notify();
