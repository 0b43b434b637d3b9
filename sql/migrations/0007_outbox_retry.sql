-- One bad outbox row must not hold back the rows claimed with it: a row whose publish failed on
-- its own (its topic does not exist, Kafka refused that message) waits until next_attempt_at while
-- the relay goes on with the others. NULL means due now: rows that never failed on their own.
-- row_failures counts those failures alone and sets the backoff; attempts also counts the tries
-- made during a Kafka outage, which must not push a row's next try minutes away once Kafka is back.
ALTER TABLE outbox_events
    ADD COLUMN next_attempt_at timestamptz,
    ADD COLUMN row_failures integer NOT NULL DEFAULT 0;
-- The claim still walks outbox_events_pending_idx in id order; the rows it skips for not being
-- due yet are the few bad ones, filtered on the way, so no second index is needed.
