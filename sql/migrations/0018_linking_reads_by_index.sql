-- The linker's statements are point lookups by index (a record's tokens, then one linked record
-- per token), and a session keeps the plans of a PL/pgSQL function once made. Made while
-- match_tokens was small (a new deployment's first minutes, or before autovacuum has analyzed
-- what a backfill added), those plans scan match_tokens whole for every token, and keep doing
-- so as it grows: about 93,000 rows read per record at 18,000 rows. With sequential scans off
-- inside the function, its plans use the indexes whatever the statistics say.
ALTER FUNCTION link_persons_of_records(uuid[], uuid[], text[], bytea[]) SET enable_seqscan = off;
