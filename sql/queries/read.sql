-- The read API (exchange_stream/read/graphql.py). Each list reads one index range. A patient's
-- lists are in receipt order, (ingested_at, record_id), and continue after a cursor of that pair;
-- `records` is the feed, in commit order (below); a person's records (migration 0015) are in
-- receipt order too. $kinds (text[]) is what the caller's credential may read, NULL for every
-- kind: a record of another kind is never read. A person id is followed to the person it was
-- merged into, coalesce(merged_into, person_id): one step, as merged_into never chains.
--
-- Every statement reads only what the recipient may: its grants, as five parameters ($g_all,
-- $g_sources, $g_kinds, $g_from, $g_until: read/grants.py says how they are built), and no
-- record of an opted-out person (opted_out_records, migration 0016). The same two conditions
-- close the WHERE of each statement over canonical rows, so a record outside them is never
-- returned, counted, or used to place a cursor.

-- fragment: granted
-- The grant condition on canonical row c, taken in as {granted $N} (infra/sql.py): $1 a grant
-- of everything, or one of the grants ($2 sources, $3 kinds, $4 first days, $5 last days, a row
-- each; null for any) allows c's source, kind and day. Export pages use it too.
($1::bool OR EXISTS (
        SELECT 1 FROM unnest($2::text[], $3::text[], $4::date[], $5::date[]) AS g(s, k, f, u)
        WHERE (g.s IS NULL OR g.s = c.source) AND (g.k IS NULL OR g.k = c.record_kind)
          AND (g.f IS NULL OR record_day(c.normalized) >= g.f)
          AND (g.u IS NULL OR record_day(c.normalized) <= g.u)))

-- name: read_patient_exists
-- $1 master token, $2 kinds or null, $3-$7 grants
SELECT EXISTS (
    SELECT 1 FROM canonical_records c
    WHERE c.normalized ->> 'patient_token' = $1 AND ($2::text[] IS NULL OR c.record_kind = ANY($2))
  AND {granted $3}
  AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id)
)

-- name: read_patient_kind
-- One patient's records of one kind: their kind object only. $1 master token, $2 kind,
-- $3/$4 the cursor (ingested_at, record_id), $5 limit, $6 kinds or null, $7-$11 grants
SELECT c.record_id, c.ingested_at, c.normalized -> $2 AS object
FROM canonical_records c
WHERE c.normalized ->> 'patient_token' = $1 AND c.record_kind = $2
  AND (c.ingested_at, c.record_id) > ($3, $4) AND ($6::text[] IS NULL OR $2 = ANY($6))
  AND {granted $7}
  AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id)
ORDER BY c.ingested_at, c.record_id
LIMIT $5

-- name: read_patient_person
-- read_patient_exists, and the patient's person: the person its records (of the caller's kinds)
-- are linked to, the oldest if they are linked to several; NULL if none is linked. Both on
-- canonical_records_patient_idx, each record's person by the primary keys.
-- $1 master token, $2 kinds or null, $3-$7 grants
SELECT EXISTS (
    SELECT 1 FROM canonical_records c
    WHERE c.normalized ->> 'patient_token' = $1 AND ($2::text[] IS NULL OR c.record_kind = ANY($2))
  AND {granted $3}
  AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id)
) AS found, (
    SELECT min(coalesce(p.merged_into, p.person_id))
    FROM canonical_records c
    JOIN record_persons rp ON rp.record_id = c.record_id
    JOIN persons p ON p.person_id = rp.person_id
    WHERE c.normalized ->> 'patient_token' = $1
      AND ($2::text[] IS NULL OR c.record_kind = ANY($2))
  AND {granted $3}
  AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id)
) AS person_id

-- name: read_record_persons
-- The person of each record of a page (Record.personToken), by the primary keys of
-- record_persons and persons; a record linked to no person has no row. The person is a scalar
-- subquery, not a join: a join of a 500-record page chose a hash join over a sequential scan of
-- persons (18-28 ms at 100,000 persons, against 3.3 ms for 500 primary-key lookups).
-- $1 record ids
SELECT rp.record_id,
       (SELECT coalesce(p.merged_into, p.person_id) FROM persons p
        WHERE p.person_id = rp.person_id) AS person_id
FROM record_persons rp
WHERE rp.record_id = ANY($1::uuid[])

-- name: read_person
-- The person a person id names now (itself, or the person it was merged into), if it holds a
-- record the caller may read; no row otherwise. The persons primary key, then
-- record_persons_person_idx and the canonical_records primary key until one record qualifies.
-- $1 person id, $2 kinds or null, $3-$7 grants
SELECT s.person_id
FROM (SELECT coalesce(merged_into, person_id) AS person_id FROM persons WHERE person_id = $1) s
WHERE EXISTS (
    SELECT 1 FROM record_persons rp
    JOIN canonical_records c ON c.record_id = rp.record_id
    WHERE rp.person_id = s.person_id AND ($2::text[] IS NULL OR c.record_kind = ANY($2))
  AND {granted $3}
  AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id)
)

-- name: read_person_records
-- One page of a person's records, across sources, in receipt order: the person's record ids
-- from record_persons_person_idx, each canonical row by its primary key, then sorted (the
-- person's rows only). record_persons always names a current person, so the person is followed
-- through merged_into here too: a merge between read_person and this statement loses no record.
-- $1 person id, $2/$3 the cursor (ingested_at, record_id), $4 limit, $5 kinds or null,
-- $6 kind or null, $7-$11 grants
SELECT c.record_id, c.source, c.record_kind, c.schema_hint, c.ingested_at, c.normalized_at,
       c.normalized
FROM record_persons rp
JOIN canonical_records c ON c.record_id = rp.record_id
WHERE rp.person_id = (SELECT coalesce(merged_into, person_id) FROM persons WHERE person_id = $1)
  AND (c.ingested_at, c.record_id) > ($2, $3)
  AND ($5::text[] IS NULL OR c.record_kind = ANY($5))
  AND ($6::text IS NULL OR c.record_kind = $6)
  AND {granted $7}
  AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id)
ORDER BY c.ingested_at, c.record_id
LIMIT $4

-- name: read_records
-- The feed: canonical rows in commit order, (insert_xid, record_id), read only below the oldest
-- transaction still running. Every row below that horizon is committed and visible, and no row
-- with a smaller insert_xid can appear later (migration 0004), so a cursor never passes a row
-- still to commit: a row whose transaction is open, or any transaction that began before it, is
-- returned once they have ended, after the rows already read. updatedSince ($5) keeps the rows
-- written at or after it; on the first page ($6, seek) the page starts at the smallest
-- insert_xid among them (one index range of canonical_records_normalized_at_idx, or the feed
-- index walked to the first such row, whichever the planner finds cheaper) instead of at the
-- start of the table, and the statement then ends with one row of record_id NULL whose
-- xid is that start (the position of an empty first page). Later pages start at their
-- cursor and read only the feed index.
-- $1/$2 the cursor (insert_xid as text, record_id), $3 limit, $4 kinds or null,
-- $5 updatedSince or null, $6 seek, $7-$11 grants
WITH horizon AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
), start AS (
    SELECT CASE WHEN $6 THEN least(
               coalesce((SELECT min(c.insert_xid) FROM canonical_records c
                         WHERE c.normalized_at >= $5
  AND {granted $7}
  AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id)),
                        xmin),
               xmin)
           ELSE '0'::xid8 END AS xid
    FROM horizon
)
(SELECT c.record_id, c.insert_xid::text AS xid, c.source, c.record_kind, c.schema_hint,
        c.ingested_at, c.normalized_at, c.normalized
 FROM canonical_records c
 WHERE (c.insert_xid, c.record_id) > ($1::text::xid8, $2::uuid)
   AND c.insert_xid < (SELECT xmin FROM horizon) AND c.insert_xid >= (SELECT xid FROM start)
   AND ($4::text[] IS NULL OR c.record_kind = ANY($4))
   AND ($5::timestamptz IS NULL OR c.normalized_at >= $5)
  AND {granted $7}
  AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id)
 ORDER BY c.insert_xid, c.record_id
 LIMIT $3)
UNION ALL
SELECT NULL, (SELECT xid FROM start)::text, NULL, NULL, NULL, NULL, NULL, NULL WHERE $6

-- name: read_records_of_kind
-- The feed of one kind (canonical_records_kind_feed_idx); as read_records.
-- $1/$2 the cursor (insert_xid as text, record_id), $3 limit, $4 kinds or null,
-- $5 updatedSince or null, $6 seek, $7 kind, $8-$12 grants
WITH horizon AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
), start AS (
    SELECT CASE WHEN $6 THEN least(
               coalesce((SELECT min(c.insert_xid) FROM canonical_records c
                         WHERE c.normalized_at >= $5 AND c.record_kind = $7
  AND {granted $8}
  AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id)),
                        xmin),
               xmin)
           ELSE '0'::xid8 END AS xid
    FROM horizon
)
(SELECT c.record_id, c.insert_xid::text AS xid, c.source, c.record_kind, c.schema_hint,
        c.ingested_at, c.normalized_at, c.normalized
 FROM canonical_records c
 WHERE c.record_kind = $7
   AND (c.insert_xid, c.record_id) > ($1::text::xid8, $2::uuid)
   AND c.insert_xid < (SELECT xmin FROM horizon) AND c.insert_xid >= (SELECT xid FROM start)
   AND ($4::text[] IS NULL OR c.record_kind = ANY($4))
   AND ($5::timestamptz IS NULL OR c.normalized_at >= $5)
  AND {granted $8}
  AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id)
 ORDER BY c.insert_xid, c.record_id
 LIMIT $3)
UNION ALL
SELECT NULL, (SELECT xid FROM start)::text, NULL, NULL, NULL, NULL, NULL, NULL WHERE $6

-- name: read_records_of_source
-- The feed of one source (canonical_records_source_feed_idx); as read_records.
-- $1/$2 the cursor (insert_xid as text, record_id), $3 limit, $4 kinds or null,
-- $5 updatedSince or null, $6 seek, $7 source, $8-$12 grants
WITH horizon AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
), start AS (
    SELECT CASE WHEN $6 THEN least(
               coalesce((SELECT min(c.insert_xid) FROM canonical_records c
                         WHERE c.normalized_at >= $5 AND c.source = $7
  AND {granted $8}
  AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id)),
                        xmin),
               xmin)
           ELSE '0'::xid8 END AS xid
    FROM horizon
)
(SELECT c.record_id, c.insert_xid::text AS xid, c.source, c.record_kind, c.schema_hint,
        c.ingested_at, c.normalized_at, c.normalized
 FROM canonical_records c
 WHERE c.source = $7
   AND (c.insert_xid, c.record_id) > ($1::text::xid8, $2::uuid)
   AND c.insert_xid < (SELECT xmin FROM horizon) AND c.insert_xid >= (SELECT xid FROM start)
   AND ($4::text[] IS NULL OR c.record_kind = ANY($4))
   AND ($5::timestamptz IS NULL OR c.normalized_at >= $5)
  AND {granted $8}
  AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id)
 ORDER BY c.insert_xid, c.record_id
 LIMIT $3)
UNION ALL
SELECT NULL, (SELECT xid FROM start)::text, NULL, NULL, NULL, NULL, NULL, NULL WHERE $6

-- name: read_records_of_source_kind
-- The feed of one source and kind (canonical_records_source_kind_feed_idx); as read_records.
-- $1/$2 the cursor (insert_xid as text, record_id), $3 limit, $4 kinds or null,
-- $5 updatedSince or null, $6 seek, $7 source,
-- $8 kind, $9-$13 grants
WITH horizon AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
), start AS (
    SELECT CASE WHEN $6 THEN least(
               coalesce((SELECT min(c.insert_xid) FROM canonical_records c
                         WHERE c.normalized_at >= $5 AND c.source = $7 AND c.record_kind = $8
  AND {granted $9}
  AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id)),
                        xmin),
               xmin)
           ELSE '0'::xid8 END AS xid
    FROM horizon
)
(SELECT c.record_id, c.insert_xid::text AS xid, c.source, c.record_kind, c.schema_hint,
        c.ingested_at, c.normalized_at, c.normalized
 FROM canonical_records c
 WHERE c.source = $7 AND c.record_kind = $8
   AND (c.insert_xid, c.record_id) > ($1::text::xid8, $2::uuid)
   AND c.insert_xid < (SELECT xmin FROM horizon) AND c.insert_xid >= (SELECT xid FROM start)
   AND ($4::text[] IS NULL OR c.record_kind = ANY($4))
   AND ($5::timestamptz IS NULL OR c.normalized_at >= $5)
  AND {granted $9}
  AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id)
 ORDER BY c.insert_xid, c.record_id
 LIMIT $3)
UNION ALL
SELECT NULL, (SELECT xid FROM start)::text, NULL, NULL, NULL, NULL, NULL, NULL WHERE $6
