-- Linking records of one person (docs/CONTRACT.md §9): match tokens, persons, merges.
--
-- match_tokens holds a canonical record's match tokens (core/match_tokens.py: HMAC-SHA256 under a
-- key per rule, from MATCH_TOKEN_SECRET) and nothing else about the patient. Every canonical
-- record belongs to one person (record_persons), assigned in the canonical row's transaction by
-- link_records below; a record whose tokens reach two or more persons merges them into the
-- oldest (the smallest person_id), and person_merges records it. A merged person keeps its row,
-- pointing at the one it became (merged_into, never a chain: merging re-points those merged
-- into it), so an id handed out before a merge still resolves.
CREATE TABLE persons (
    person_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merged_into bigint REFERENCES persons (person_id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (merged_into IS NULL OR merged_into < person_id)
);

CREATE TABLE match_tokens (
    rule      text NOT NULL,
    token     bytea NOT NULL,
    record_id uuid NOT NULL REFERENCES canonical_records (record_id) ON DELETE CASCADE,
    PRIMARY KEY (rule, token, record_id),
    CHECK (length(token) = 32)
);
CREATE INDEX match_tokens_record_idx ON match_tokens (record_id);

CREATE TABLE record_persons (
    record_id uuid PRIMARY KEY REFERENCES canonical_records (record_id) ON DELETE CASCADE,
    person_id bigint NOT NULL REFERENCES persons (person_id),
    linked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX record_persons_person_idx ON record_persons (person_id, record_id);

CREATE TABLE person_merges (
    merged     bigint PRIMARY KEY REFERENCES persons (person_id),
    into_id    bigint NOT NULL REFERENCES persons (person_id),
    by_record  uuid NOT NULL,
    merged_at  timestamptz NOT NULL DEFAULT now()
);

-- Link the records of one batch: $1 the batch's record ids (each gets a person), and its match
-- tokens as parallel arrays ($2 owner record id, $3 rule, $4 token: the tokens of the linking
-- rules of core/match_tokens.py). Records that already have a person (a replay, a redelivery)
-- are left as they are, tokens and all.
--
-- Decision rule (the same as core/match_tokens.link): two records are one person when they
-- have an equal token of the same rule, closed transitively. A new record
-- joins the person of every record it shares a token with; none: a new person; several: they
-- merge into the oldest. The persons are therefore the connected components of "shares a
-- token", whatever the order of arrival or the number of workers.
--
-- Concurrency: linking is serialised by one transaction-level advisory lock, taken before the
-- function looks at anything and held until the transaction commits, so a batch sees every
-- person and merge that the batches linked before it committed (READ COMMITTED: each statement
-- sees what was committed before it began). Two workers linking records of one person at the
-- same moment therefore neither split it (the second finds the first's person) nor lose a
-- merge. Holding the lock costs the other batches a wait of one link statement and one commit
-- (milliseconds), never a deadlock: nothing taken before it is waited for while it is held by
-- another batch, as a record is in one batch's canonical statement at a time (its ledger rows).
-- The rows of the persons a record joins or merges are still locked (FOR UPDATE), so that an
-- operator's statement or a later concurrent linker could not change them underneath.
CREATE FUNCTION link_records(p_records uuid[], p_owners uuid[], p_rules text[], p_tokens bytea[])
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    fresh uuid[];
    r uuid;
    candidates bigint[];
    moved boolean;
    survivor bigint;
BEGIN
    -- Linking is serialised: one transaction-level advisory lock ('MTKN', 0), held from here
    -- to the commit (the link statement and the COMMIT after it: milliseconds a batch).
    PERFORM pg_advisory_xact_lock(1297369931, 0);
    -- The batch's records without a person yet (seen once the lock is held), in one order.
    fresh := ARRAY(
        SELECT DISTINCT b.id FROM unnest(p_records) AS b(id)
        WHERE NOT EXISTS (SELECT 1 FROM record_persons rp WHERE rp.record_id = b.id)
        ORDER BY b.id);
    IF cardinality(fresh) = 0 THEN
        RETURN;
    END IF;
    INSERT INTO match_tokens (rule, token, record_id)
    SELECT t.rule, t.token, t.owner
    FROM unnest(p_owners, p_rules, p_tokens) AS t(owner, rule, token)
    WHERE t.owner = ANY (fresh)
    ON CONFLICT DO NOTHING;
    FOREACH r IN ARRAY fresh LOOP
        -- Every record that shares a token is already in one person with the others that share
        -- it (linking keeps it so), so one linked record per token is enough: the cost is one
        -- index probe per token, however many records the person has.
        SELECT array_agg(DISTINCT coalesce(p.merged_into, p.person_id)) INTO candidates
        FROM match_tokens mine
        CROSS JOIN LATERAL (
            SELECT rp.person_id
            FROM match_tokens theirs
            JOIN record_persons rp ON rp.record_id = theirs.record_id
            WHERE theirs.rule = mine.rule AND theirs.token = mine.token AND theirs.record_id <> r
            LIMIT 1
        ) one
        JOIN persons p ON p.person_id = one.person_id
        WHERE mine.record_id = r;
        -- Lock the candidates; any merged meanwhile is replaced by its survivor, locked next.
        LOOP
            EXIT WHEN candidates IS NULL;
            SELECT bool_or(l.merged_into IS NOT NULL),
                   array_agg(DISTINCT coalesce(l.merged_into, l.person_id))
              INTO moved, candidates
            FROM (SELECT person_id, merged_into FROM persons
                  WHERE person_id = ANY (candidates) ORDER BY person_id FOR UPDATE) l;
            EXIT WHEN NOT moved;
        END LOOP;
        IF candidates IS NULL THEN
            INSERT INTO persons DEFAULT VALUES RETURNING person_id INTO survivor;
        ELSE
            candidates := ARRAY(SELECT unnest(candidates) ORDER BY 1);
            survivor := candidates[1];
            IF cardinality(candidates) > 1 THEN
                INSERT INTO person_merges (merged, into_id, by_record)
                SELECT m, survivor, r FROM unnest(candidates[2:]) AS m;
                UPDATE persons SET merged_into = survivor
                WHERE person_id = ANY (candidates[2:]) OR merged_into = ANY (candidates[2:]);
                UPDATE record_persons SET person_id = survivor
                WHERE person_id = ANY (candidates[2:]);
            END IF;
        END IF;
        INSERT INTO record_persons (record_id, person_id) VALUES (r, survivor);
    END LOOP;
END
$$;
