-- Dependencies and workflows. A task may wait for other tasks (`waiting`, a new state): the
-- state CHECK changes, which SQLite can only do by rebuilding the table, so every task moves,
-- unchanged, into a new `orch_tasks` with the new columns:
--   waiting_for    while waiting, how many of its parents have not finished;
--   dependents     how many tasks depend on it (0 for almost every task: the fast paths skip
--                  tasks that have some);
--   workflow_id    the workflow it belongs to, if any, and workflow_step its step there.
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
    idempotency_key  TEXT    UNIQUE,
    locks            TEXT    NOT NULL DEFAULT '[]',
    waiting_for      INTEGER NOT NULL DEFAULT 0,
    dependents       INTEGER NOT NULL DEFAULT 0,
    workflow_id      BLOB,
    workflow_step    INTEGER
);
INSERT INTO orch_tasks_new (id, core_id, status, priority, timeout_us, max_attempts, attempt,
                            run_at, created_at, updated_at, started_at, finished_at,
                            lease_token, lease_expires_at, payload, metadata, result, error,
                            idempotency_key, locks)
SELECT id, core_id, status, priority, timeout_us, max_attempts, attempt, run_at, created_at,
       updated_at, started_at, finished_at, lease_token, lease_expires_at, payload, metadata,
       result, error, idempotency_key, locks
FROM orch_tasks;
DROP TABLE orch_tasks;
ALTER TABLE orch_tasks_new RENAME TO orch_tasks;

-- The indexes of 0001 and 0002, as they were.
CREATE INDEX orch_tasks_claim ON orch_tasks (core_id, priority DESC, run_at, id)
    WHERE status = 'queued';
CREATE INDEX orch_tasks_lease ON orch_tasks (lease_expires_at, id)
    WHERE lease_expires_at IS NOT NULL;
CREATE INDEX orch_tasks_finished ON orch_tasks (finished_at) WHERE finished_at IS NOT NULL;
-- A workflow's tasks.
CREATE INDEX orch_tasks_workflow ON orch_tasks (workflow_id, workflow_step)
    WHERE workflow_id IS NOT NULL;

-- One row per dependency: `child_id` waits for `parent_id`, the `position`-th it named; what
-- the parent's failure does is `on_failure`.
CREATE TABLE orch_task_deps (
    child_id   BLOB    NOT NULL,
    position   INTEGER NOT NULL,
    parent_id  BLOB    NOT NULL,
    on_failure TEXT    NOT NULL CHECK (on_failure IN ('fail', 'cancel', 'run_anyway')),
    PRIMARY KEY (child_id, position)
) WITHOUT ROWID;
CREATE INDEX orch_task_deps_parent ON orch_task_deps (parent_id, child_id);

-- A workflow: a graph of tasks dispatched as one unit, with counts kept by the steps that end
-- its tasks.
CREATE TABLE orch_workflows (
    id              BLOB    NOT NULL PRIMARY KEY,
    idempotency_key TEXT    UNIQUE,
    status          TEXT    NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'partly')),
    tasks           INTEGER NOT NULL,
    unfinished      INTEGER NOT NULL,
    succeeded       INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    finished_at     INTEGER
);
CREATE INDEX orch_workflows_finished ON orch_workflows (finished_at)
    WHERE finished_at IS NOT NULL;
