-- Dependencies and workflows. A task may wait for other tasks (`waiting`, a new state), and
-- tasks may form a workflow. New columns of `orch_tasks` (constant defaults: no rewrite):
--   waiting_for    while waiting, how many of its parents have not finished (decremented by
--                  the statement that ends each one, under the row lock: two parents ending at
--                  once in two processes release the task exactly once);
--   dependents     how many tasks depend on it (0 for almost every task: the fast path of
--                  successes skips tasks that have some);
--   workflow_id    the workflow it belongs to, if any, and workflow_step its step there;
--   doom           set on a waiting task that a parent's failure ends ({"parent", "status",
--                  "to", "position"}), until a later statement ends it (a statement cannot end
--                  a task's children's children too, so failures cascade a level per
--                  statement; a crash in between leaves the mark, which the rescuer's sweep
--                  finds).
ALTER TABLE orch_tasks DROP CONSTRAINT orch_tasks_status_check;
ALTER TABLE orch_tasks ADD CONSTRAINT orch_tasks_status_check CHECK (status IN
    ('waiting', 'queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out'));
ALTER TABLE orch_tasks
    ADD COLUMN waiting_for   integer NOT NULL DEFAULT 0,
    ADD COLUMN dependents    integer NOT NULL DEFAULT 0,
    ADD COLUMN workflow_id   uuid,
    ADD COLUMN workflow_step integer,
    ADD COLUMN doom          jsonb;

-- A workflow's tasks, and the waiting tasks left to end (neither predicate is one a statement
-- about a single task names, so neither looks better than the primary key there).
CREATE INDEX orch_tasks_workflow ON orch_tasks (workflow_id, workflow_step)
    WHERE workflow_id IS NOT NULL;
CREATE INDEX orch_tasks_doomed ON orch_tasks (id) WHERE doom IS NOT NULL;

-- One row per dependency: `child_id` waits for `parent_id`, the `position`-th it named; what
-- the parent's failure does is `on_failure`. Written with the child, read by the statement
-- that ends the parent.
CREATE TABLE orch_task_deps (
    child_id   uuid    NOT NULL,
    position   integer NOT NULL,
    parent_id  uuid    NOT NULL,
    on_failure text    NOT NULL CHECK (on_failure IN ('fail', 'cancel', 'run_anyway')),
    PRIMARY KEY (child_id, position)
);
CREATE INDEX orch_task_deps_parent ON orch_task_deps (parent_id, child_id);

-- A workflow: a graph of tasks dispatched as one unit. Its counts are kept by the statements
-- that end its tasks (under the row lock, so exactly one of them sees the last end and
-- appends the workflow's event).
CREATE TABLE orch_workflows (
    id              uuid        NOT NULL PRIMARY KEY,
    idempotency_key text        UNIQUE,
    status          text        NOT NULL
                        CHECK (status IN ('running', 'succeeded', 'failed', 'partly')),
    tasks           integer     NOT NULL,
    unfinished      integer     NOT NULL,
    succeeded       integer     NOT NULL,
    created_at      timestamptz NOT NULL,
    finished_at     timestamptz
);
CREATE INDEX orch_workflows_finished ON orch_workflows (finished_at)
    WHERE finished_at IS NOT NULL;

-- Aborts the statement that calls it with `sqlstate` and `message`: how a statement refuses
-- what it finds (an unknown parent: `OR001`) or asks to be run again on a fresh snapshot
-- (`40001`: a parent gained a dependent after the snapshot was taken, or was busy).
CREATE FUNCTION orch_raise(sqlstate text, message text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = sqlstate, MESSAGE = message;
END $$;
