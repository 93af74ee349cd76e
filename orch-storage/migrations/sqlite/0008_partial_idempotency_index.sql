-- Idempotency keys through a partial unique index: the `UNIQUE` column constraint of 0005 kept
-- an index entry for every task, keyed NULL for the tasks dispatched without a key (almost all
-- of them), and each new task paid for its entry. A column constraint cannot be dropped in
-- SQLite, so every task moves, unchanged, into a new `orch_tasks` without it (as in 0005), and
-- the keys are kept unique by an index over the tasks that have one.
CREATE TABLE orch_tasks_new (
    id               BLOB    NOT NULL PRIMARY KEY,
    core_id          TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN
                         ('waiting', 'queued', 'running', 'succeeded', 'failed', 'cancelled',
                          'timed_out')),
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
    idempotency_key  TEXT,
    locks            TEXT    NOT NULL DEFAULT '[]',
    waiting_for      INTEGER NOT NULL DEFAULT 0,
    dependents       INTEGER NOT NULL DEFAULT 0,
    workflow_id      BLOB,
    workflow_step    INTEGER,
    traceparent      TEXT,
    tracestate       TEXT
);
-- In rowid order, so the rows keep the order they were stored in.
INSERT INTO orch_tasks_new (id, core_id, status, priority, timeout_us, max_attempts, attempt,
                            run_at, created_at, updated_at, started_at, finished_at,
                            lease_token, lease_expires_at, payload, metadata, result, error,
                            idempotency_key, locks, waiting_for, dependents, workflow_id,
                            workflow_step, traceparent, tracestate)
SELECT id, core_id, status, priority, timeout_us, max_attempts, attempt, run_at, created_at,
       updated_at, started_at, finished_at, lease_token, lease_expires_at, payload, metadata,
       result, error, idempotency_key, locks, waiting_for, dependents, workflow_id,
       workflow_step, traceparent, tracestate
FROM orch_tasks ORDER BY rowid;
DROP TABLE orch_tasks;
ALTER TABLE orch_tasks_new RENAME TO orch_tasks;

CREATE UNIQUE INDEX orch_tasks_idempotency ON orch_tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The indexes of 0005, as they were.
CREATE INDEX orch_tasks_claim ON orch_tasks (core_id, priority DESC, run_at, id)
    WHERE status = 'queued';
CREATE INDEX orch_tasks_lease ON orch_tasks (lease_expires_at, id)
    WHERE lease_expires_at IS NOT NULL;
CREATE INDEX orch_tasks_finished ON orch_tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX orch_tasks_workflow ON orch_tasks (workflow_id, workflow_step)
    WHERE workflow_id IS NOT NULL;
