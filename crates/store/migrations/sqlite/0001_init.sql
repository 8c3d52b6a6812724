-- b24gate schema, SQLite dialect. Timestamps are Unix milliseconds (INTEGER),
-- JSON is TEXT, secrets are AEAD ciphertexts (BLOB) or keyed hashes (BLOB).
-- Keep in step with ../postgres/0001_init.sql: the conformance suite runs the
-- same tests against both.

-- One row per portal (member_id is the stable key across renames and reinstalls).
CREATE TABLE portals (
    member_id          TEXT PRIMARY KEY NOT NULL,
    domain             TEXT NOT NULL,
    client_endpoint    TEXT NOT NULL,
    server_endpoint    TEXT NOT NULL,
    status             TEXT NOT NULL,
    status_reason      TEXT,
    status_changed_at  INTEGER NOT NULL,
    generation         INTEGER NOT NULL DEFAULT 1,
    installed_version  INTEGER,
    install_flow       TEXT,
    app_status         TEXT,
    scopes             TEXT NOT NULL DEFAULT '',
    profile            TEXT NOT NULL DEFAULT '{}',
    plan               TEXT NOT NULL DEFAULT 'standard',
    license            TEXT,
    language           TEXT,
    app_token_hash     BLOB,
    install_started_at INTEGER,
    installed_at       INTEGER,
    uninstalled_at     INTEGER,
    purge_after        INTEGER,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);
CREATE INDEX portals_status ON portals (status);

-- OAuth credentials of the portal's installing admin. Tokens are sealed with
-- the master key; `version` increments on every rotation (compare-and-swap),
-- `lock_owner`/`lock_until` make a refresh single-flight across processes.
CREATE TABLE credentials (
    member_id      TEXT PRIMARY KEY NOT NULL REFERENCES portals (member_id) ON DELETE CASCADE,
    user_id        INTEGER,
    access_token   BLOB NOT NULL,
    refresh_token  BLOB NOT NULL,
    expires_at     INTEGER NOT NULL,
    scope          TEXT NOT NULL DEFAULT '',
    version        INTEGER NOT NULL DEFAULT 1,
    refreshed_at   INTEGER,
    lock_owner     TEXT,
    lock_until     INTEGER,
    updated_at     INTEGER NOT NULL
);

-- Expected (from the manifest) and actual (from event.get / placement.get)
-- bindings in one table: the binding matrix is a read of it.
CREATE TABLE bindings (
    member_id       TEXT NOT NULL REFERENCES portals (member_id) ON DELETE CASCADE,
    kind            TEXT NOT NULL,          -- 'event' | 'placement'
    name            TEXT NOT NULL,          -- event code or placement code
    mode            TEXT NOT NULL,          -- 'online' | 'offline' ('online' for placements)
    handler         TEXT NOT NULL,          -- '' for offline events
    connector       TEXT NOT NULL DEFAULT '',
    auth_type       INTEGER NOT NULL DEFAULT 0,
    owner           TEXT,
    options         TEXT NOT NULL DEFAULT '{}',
    expected        INTEGER NOT NULL DEFAULT 0,
    actual          INTEGER NOT NULL DEFAULT 0,
    state           TEXT NOT NULL,          -- 'pending' | 'bound' | 'missing' | 'stale' | 'unsatisfiable' | 'failed' | 'foreign'
    reason          TEXT,
    last_result     TEXT,
    last_checked_at INTEGER,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (member_id, kind, name, mode, handler, connector)
);

-- Append-only: no foreign key, so a portal's audit trail survives its purge.
CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    member_id TEXT,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    detail    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_portal ON audit_log (member_id, at);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

-- Every acknowledged delivery, online or drained from the offline queue.
-- `payload` holds the event without its secrets; `secrets` holds the sealed
-- auth tokens where the event carried any (needed to verify an install).
CREATE TABLE inbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    member_id   TEXT NOT NULL,
    dedupe_key  TEXT NOT NULL UNIQUE,
    event       TEXT NOT NULL,
    source      TEXT NOT NULL,              -- 'online' | 'offline'
    verified    INTEGER NOT NULL,
    ts          INTEGER,
    received_at INTEGER NOT NULL,
    payload     TEXT NOT NULL,
    secrets     BLOB,
    state       TEXT NOT NULL DEFAULT 'pending',  -- 'pending' | 'processed' | 'rejected'
    processed_at INTEGER
);
CREATE INDEX inbox_pending ON inbox (state, id);
CREATE INDEX inbox_portal ON inbox (member_id, received_at);

-- The job queue (BRIEF §3 "Jobs").
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT NOT NULL,
    member_id    TEXT,
    serial_key   TEXT,
    unique_key   TEXT,
    -- Whether the job calls the portal: such jobs are cancelled at uninstall
    -- (no REST call afterwards); forwards to the app are not.
    calls_portal INTEGER NOT NULL DEFAULT 1,
    payload      TEXT NOT NULL DEFAULT '{}',
    state        TEXT NOT NULL,             -- available | running | retryable | completed | discarded | cancelled
    attempt      INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at       INTEGER NOT NULL,
    locked_by    TEXT,
    locked_until INTEGER,
    last_error   TEXT,
    created_at   INTEGER NOT NULL,
    finalized_at INTEGER
);
CREATE INDEX jobs_ready ON jobs (state, run_at);
CREATE INDEX jobs_portal ON jobs (member_id, state);
CREATE UNIQUE INDEX jobs_unique_live ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('available', 'running', 'retryable');

-- Offline drain state per portal and auth connector; `process_id` is kept
-- durable so a crash between reserve and clear resumes the same reservation.
CREATE TABLE offline_drains (
    member_id     TEXT NOT NULL REFERENCES portals (member_id) ON DELETE CASCADE,
    connector     TEXT NOT NULL DEFAULT '',
    process_id    TEXT,
    -- Set while a reserve (event.offline.get clear=0) is in flight: a crash
    -- then leaves a reservation we never learnt the id of, to be found again.
    reserving     INTEGER NOT NULL DEFAULT 0,
    reserved_at   INTEGER,
    last_drain_at INTEGER,
    drained_total INTEGER NOT NULL DEFAULT 0,
    error_total   INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (member_id, connector)
);

-- Calls parked on METHOD_CONFIRM_WAITING until ONAPPMETHODCONFIRM decides.
CREATE TABLE pending_calls (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    member_id         TEXT NOT NULL REFERENCES portals (member_id) ON DELETE CASCADE,
    method            TEXT NOT NULL,
    params            TEXT NOT NULL DEFAULT '{}',
    token_fingerprint TEXT NOT NULL,
    access_token      BLOB NOT NULL,
    state             TEXT NOT NULL,        -- waiting | confirmed | denied | done | failed | expired
    result            TEXT,
    requested_at      INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE INDEX pending_calls_lookup ON pending_calls (member_id, method, state);

-- Per-portal manifest migrations applied (each exactly once; `step` resumes).
CREATE TABLE portal_migrations (
    member_id    TEXT NOT NULL REFERENCES portals (member_id) ON DELETE CASCADE,
    migration_id TEXT NOT NULL,
    version      INTEGER NOT NULL,
    step         INTEGER NOT NULL DEFAULT 0,
    state        TEXT NOT NULL,             -- running | applied
    applied_at   INTEGER,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (member_id, migration_id)
);

-- A shared leaky bucket per portal, so the Bitrix24 rate limit holds across
-- every process on this database.
CREATE TABLE rate_buckets (
    member_id  TEXT PRIMARY KEY NOT NULL,
    level      REAL NOT NULL,
    updated_at INTEGER NOT NULL,
    slow_until INTEGER
);

-- Named leases: per-portal drainers and reconcilers, the job rescuer.
CREATE TABLE leases (
    name   TEXT PRIMARY KEY NOT NULL,
    owner  TEXT NOT NULL,
    until  INTEGER NOT NULL
);
