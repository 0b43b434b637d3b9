-- Every change to a recipient notifies 'recipients_changed' with its id, at commit, so that each
-- worker drops what it cached of that recipient at once (read/tokens.py); the cache TTL is only
-- the backstop. The function is for any table with a recipient_id column: a table of recipients'
-- credentials adds the same trigger. Row-level, because the payload is the row's recipient, and
-- Postgres sends one notification per distinct payload per transaction however many rows change.
CREATE FUNCTION notify_recipient_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('recipients_changed', OLD.recipient_id);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('recipients_changed', NEW.recipient_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER recipients_notify
    AFTER INSERT OR UPDATE OR DELETE ON recipients
    FOR EACH ROW EXECUTE FUNCTION notify_recipient_changed();

CREATE TRIGGER recipient_keys_notify
    AFTER INSERT OR UPDATE OR DELETE ON recipient_keys
    FOR EACH ROW EXECUTE FUNCTION notify_recipient_changed();
