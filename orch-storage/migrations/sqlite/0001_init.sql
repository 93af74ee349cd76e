-- orch schema for SQLite. Times are integer microseconds since the Unix epoch (UTC); ids and
-- lease tokens are 16-byte UUID blobs (byte order is UUID order); JSON is stored as text.

CREATE TABLE orch_tasks (
    id               BLOB    NOT NULL PRIMARY KEY,
    core_id          TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN
                         ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    priority         INTEGER NOT NULL,
    timeout_us       INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    run_at           INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    lease_token      BLOB,
    lease_expires_at INTEGER,
    payload          TEXT    NOT NULL,
    metadata         TEXT    NOT NULL,
    result           TEXT,
    error            TEXT,
    idempotency_key  TEXT    UNIQUE,
    locks            TEXT    NOT NULL DEFAULT '[]'
);

-- Claim order among available tasks of a core.
CREATE INDEX orch_tasks_claim ON orch_tasks (core_id, priority DESC, run_at, id)
    WHERE status = 'queued';
-- Rescue of expired leases.
CREATE INDEX orch_tasks_lease ON orch_tasks (lease_expires_at, id) WHERE status = 'running';
-- Pruning of finished tasks.
CREATE INDEX orch_tasks_finished ON orch_tasks (finished_at) WHERE finished_at IS NOT NULL;
-- Listing by state.
CREATE INDEX orch_tasks_status ON orch_tasks (status, id);

-- AUTOINCREMENT: a sequence number is never reused, even after pruning.
CREATE TABLE orch_events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT    NOT NULL,
    at      INTEGER NOT NULL,
    task_id BLOB,
    core_id TEXT,
    attempt INTEGER,
    data    TEXT    NOT NULL
);
CREATE INDEX orch_events_at ON orch_events (at);

CREATE TABLE orch_locks (
    resource      TEXT    NOT NULL PRIMARY KEY,
    owner         TEXT    NOT NULL,
    fencing_token INTEGER NOT NULL,
    acquired_at   INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);

-- The last fencing token granted (one row): tokens strictly increase across all resources.
CREATE TABLE orch_lock_tokens (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
INSERT INTO orch_lock_tokens (id, last) VALUES (1, 0);

CREATE TABLE orch_kv (
    key   TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL
);
