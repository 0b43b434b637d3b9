-- Statistics for the tables of migration 0016 that every read consults, while they are empty.
--
-- A table never analyzed is planned as if it held about ten pages: each record a read returns
-- was then probed in opted_out_records by a bitmap heap scan (two more buffers a row). Analyzed
-- empty, it costs nothing a row; autovacuum analyzes it again once about 50 rows have changed.
ANALYZE recipient_grants;
ANALYZE opt_outs;
ANALYZE opt_out_tokens;
ANALYZE opted_out_persons;
ANALYZE opted_out_records;
