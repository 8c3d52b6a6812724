-- A claim checks, for each candidate with a serial key, whether an earlier
-- job of that key is waiting or one is running. Without this index every
-- such check scanned all waiting jobs (90 ms per claim with 4,000 forwards
-- queued behind 100 portals' drains).
CREATE INDEX jobs_serial ON jobs (serial_key, state, id) WHERE serial_key IS NOT NULL;

-- Claims scan one state at a time in (run_at, id) order and stop at the
-- limit: the index carries the tie-breaker too.
DROP INDEX jobs_ready;
CREATE INDEX jobs_ready ON jobs (state, run_at, id);
