-- Delivery under agreements (docs/API.md "Grants, opt-outs and read audit", "Bulk export"):
-- what each recipient may read, who asked to be left out, who read what, and bulk exports.

-- Grants: deny by default. A recipient reads a record only when one of its grants (not revoked)
-- allows the record's source, its kind and its day (record_day below). NULL sources or kinds:
-- every one; NULL from/until: no bound on that side (both bounds inclusive).
CREATE TABLE recipient_grants (
    grant_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient_id text        NOT NULL REFERENCES recipients (recipient_id),
    sources      text[]      CHECK (cardinality(sources) > 0),
    kinds        text[]      CHECK (cardinality(kinds) > 0
                                    AND kinds <@ ARRAY['encounter', 'claim', 'lab_result']),
    from_date    date,
    until_date   date        CHECK (until_date >= from_date),
    created_by   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX recipient_grants_recipient_idx ON recipient_grants (recipient_id)
    WHERE revoked_at IS NULL;

-- A change to a grant reaches every worker's cache at once, as a change to a recipient does.
CREATE TRIGGER recipient_grants_notify
    AFTER INSERT OR UPDATE OR DELETE ON recipient_grants
    FOR EACH ROW EXECUTE FUNCTION notify_recipient_changed();

-- Recipients registered before grants existed keep what they could read: one grant of every
-- source, kind and day each (an operator narrows it with revoke-grant and grant). Recipients
-- registered from now on read nothing until granted.
INSERT INTO recipient_grants (recipient_id, created_by)
SELECT recipient_id, 'migration 0016' FROM recipients WHERE status = 'active';

-- The day a grant's dates bound: an encounter's admission, a claim's service date, a lab
-- result's collection (their UTC date: canonical times are RFC 3339 UTC, so the date is the
-- first ten characters); NULL when the record has none, which only an undated grant allows.
CREATE FUNCTION record_day(normalized jsonb) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT left(coalesce(normalized -> 'encounter' ->> 'admit_time',
                         normalized -> 'claim' ->> 'service_date',
                         normalized -> 'lab_result' ->> 'collected_at'), 10)::date
$$;

-- Opt-outs. An identity is tokenized when it is recorded and never stored: opt_outs keeps its
-- master token, opt_out_tokens its match tokens of the linking rules (core/match_tokens.py).
-- The person of each (every person a record with that master token or a shared match token
-- belongs to, now or later, merges included) is excluded: opted_out_persons names those
-- persons, opted_out_records every record of them, which every read and export leaves out.
-- Removing the opt-out (a delete) takes its rows away; a record another opt-out also reaches
-- stays excluded.
CREATE TABLE opt_outs (
    opt_out_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_token text        NOT NULL UNIQUE CHECK (patient_token ~ '^[0-9a-f]{64}$'),
    created_by    text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE opt_out_tokens (
    rule       text   NOT NULL,
    token      bytea  NOT NULL CHECK (length(token) = 32),
    opt_out_id bigint NOT NULL REFERENCES opt_outs (opt_out_id) ON DELETE CASCADE,
    PRIMARY KEY (rule, token, opt_out_id)
);
CREATE INDEX opt_out_tokens_opt_out_idx ON opt_out_tokens (opt_out_id);

CREATE TABLE opted_out_persons (
    opt_out_id bigint NOT NULL REFERENCES opt_outs (opt_out_id) ON DELETE CASCADE,
    person_id  bigint NOT NULL REFERENCES persons (person_id),
    PRIMARY KEY (opt_out_id, person_id)
);
CREATE INDEX opted_out_persons_person_idx ON opted_out_persons (person_id);

-- marked_xid: the transaction that marked the record, so that an export in progress finds the
-- records opted out after it began (not visible in its first snapshot) and takes them out of the
-- files it has already written (ops/export.py).
CREATE TABLE opted_out_records (
    record_id  uuid   NOT NULL REFERENCES canonical_records (record_id) ON DELETE CASCADE,
    opt_out_id bigint NOT NULL REFERENCES opt_outs (opt_out_id) ON DELETE CASCADE,
    marked_xid xid8   NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (record_id, opt_out_id)
);
CREATE INDEX opted_out_records_opt_out_idx ON opted_out_records (opt_out_id);

-- Mark the persons of one opt-out and every record of theirs. $1 the opt-out, $2 persons
-- (current ids). Idempotent.
CREATE FUNCTION opt_out_mark(p_opt_out bigint, p_persons bigint[]) RETURNS void
LANGUAGE sql VOLATILE AS $$
    INSERT INTO opted_out_persons (opt_out_id, person_id)
    SELECT p_opt_out, p FROM unnest(p_persons) AS p
    ON CONFLICT DO NOTHING;
    INSERT INTO opted_out_records (record_id, opt_out_id)
    SELECT rp.record_id, p_opt_out FROM record_persons rp WHERE rp.person_id = ANY (p_persons)
    ON CONFLICT DO NOTHING;
$$;

-- Apply the opt-outs to records just linked ($1, the linking batch): a record whose master
-- token or a match token is an opt-out's, or whose person is (or absorbed) an opted-out person,
-- excludes its whole person. Called with the linking lock held, so no opt-out is recorded
-- between this look and the marks. Nothing to do (one index probe) when there is no opt-out.
CREATE FUNCTION apply_opt_outs(p_records uuid[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    hit record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM opt_outs) THEN
        RETURN;
    END IF;
    FOR hit IN
        SELECT h.opt_out_id, array_agg(DISTINCT h.person_id) AS persons
        FROM (
            SELECT o.opt_out_id, rp.person_id
            FROM unnest(p_records) AS b(id)
            JOIN canonical_records c ON c.record_id = b.id
            JOIN opt_outs o ON o.patient_token = c.normalized ->> 'patient_token'
            JOIN record_persons rp ON rp.record_id = b.id
            UNION
            SELECT t.opt_out_id, rp.person_id
            FROM unnest(p_records) AS b(id)
            JOIN match_tokens m ON m.record_id = b.id
            JOIN opt_out_tokens t ON t.rule = m.rule AND t.token = m.token
            JOIN record_persons rp ON rp.record_id = b.id
            UNION
            SELECT op.opt_out_id, rp.person_id
            FROM unnest(p_records) AS b(id)
            JOIN record_persons rp ON rp.record_id = b.id
            JOIN persons p ON coalesce(p.merged_into, p.person_id) = rp.person_id
            JOIN opted_out_persons op ON op.person_id = p.person_id
        ) h
        GROUP BY h.opt_out_id
    LOOP
        PERFORM opt_out_mark(hit.opt_out_id, hit.persons);
    END LOOP;
END
$$;

-- Linking now applies the opt-outs too, in the same transaction and under the same lock: a new
-- record of an opted-out person is excluded from its commit on. The linker of migration 0015
-- keeps its body under another name.
ALTER FUNCTION link_records(uuid[], uuid[], text[], bytea[]) RENAME TO link_persons_of_records;
CREATE FUNCTION link_records(p_records uuid[], p_owners uuid[], p_rules text[], p_tokens bytea[])
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM link_persons_of_records(p_records, p_owners, p_rules, p_tokens);
    PERFORM apply_opt_outs(p_records);
END
$$;

-- Record one opt-out: $1 the master token, $2/$3 the identity's match tokens (rule, token),
-- $4 who asked. Under the linking lock, so that a record linked at the same moment is either
-- seen here or sees the opt-out. Returns the opt-out's id (the existing one for a token
-- recorded before: idempotent).
CREATE FUNCTION opt_out_add(p_token text, p_rules text[], p_tokens bytea[], p_actor text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    oid bigint;
    reached bigint[];
BEGIN
    PERFORM pg_advisory_xact_lock(1297369931, 0);
    INSERT INTO opt_outs (patient_token, created_by) VALUES (p_token, p_actor)
    ON CONFLICT (patient_token) DO NOTHING
    RETURNING opt_out_id INTO oid;
    IF oid IS NULL THEN
        SELECT opt_out_id INTO oid FROM opt_outs WHERE patient_token = p_token;
    END IF;
    INSERT INTO opt_out_tokens (rule, token, opt_out_id)
    SELECT t.rule, t.token, oid FROM unnest(p_rules, p_tokens) AS t(rule, token)
    ON CONFLICT DO NOTHING;
    -- Records of the token itself, linked to a person or not (rows from before linking).
    INSERT INTO opted_out_records (record_id, opt_out_id)
    SELECT c.record_id, oid FROM canonical_records c
    WHERE c.normalized ->> 'patient_token' = p_token
    ON CONFLICT DO NOTHING;
    reached := ARRAY(
        SELECT DISTINCT rp.person_id
        FROM (SELECT c.record_id FROM canonical_records c
              WHERE c.normalized ->> 'patient_token' = p_token
              UNION
              SELECT m.record_id FROM unnest(p_rules, p_tokens) AS t(rule, token)
              JOIN match_tokens m ON m.rule = t.rule AND m.token = t.token) r
        JOIN record_persons rp ON rp.record_id = r.record_id);
    PERFORM opt_out_mark(oid, reached);
    RETURN oid;
END
$$;

-- Read audit: one row per GraphQL request or export, written in batches (read/audit.py). Who
-- (the recipient), what (the operation: the root fields read, or "export"), which kinds, how
-- many rows, when and how long. Never a token, an argument or a value.
CREATE TABLE read_audit (
    occurred_at    timestamptz NOT NULL,
    recipient_id   text        NOT NULL,
    operation      text        NOT NULL,
    kinds          text[]      NOT NULL,
    rows           integer     NOT NULL,
    duration_ms    real        NOT NULL,
    status         text        NOT NULL,
    correlation_id text
);
CREATE INDEX read_audit_recipient_idx ON read_audit (recipient_id, occurred_at);

-- Bulk exports (FHIR Bulk Data Access, "Flat FHIR"). One row per kick-off; the run itself is
-- an operation (job_runs, its checkpoint in job_checkpoints as 'export:<id>'). horizon: the
-- feed position of the kick-off (migration 0012's insert_xid): every row below it is committed
-- and no later row is below it, so the export reads one fixed set of rows, however often it is
-- resumed. output: the manifest's files once completed ([{type, key, count, bytes}]).
CREATE TABLE exports (
    export_id        uuid        PRIMARY KEY,
    recipient_id     text        NOT NULL REFERENCES recipients (recipient_id),
    status           text        NOT NULL DEFAULT 'accepted'
        CHECK (status IN ('accepted', 'running', 'completed', 'failed', 'cancelled')),
    request_url      text        NOT NULL,
    params           jsonb       NOT NULL,
    transaction_time timestamptz NOT NULL,
    horizon          xid8        NOT NULL,
    job_run_id       uuid,
    output           jsonb       NOT NULL DEFAULT '[]'::jsonb,
    errors           jsonb       NOT NULL DEFAULT '[]'::jsonb,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    expires_at       timestamptz,
    files_deleted_at timestamptz
);
CREATE INDEX exports_recipient_live_idx ON exports (recipient_id)
    WHERE status IN ('accepted', 'running');
CREATE INDEX exports_expiry_idx ON exports (expires_at) WHERE files_deleted_at IS NULL;
