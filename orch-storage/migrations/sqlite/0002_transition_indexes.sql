-- Indexes that a transition on one task can never prefer over the primary key (as in the
-- PostgreSQL schema). The (status, id) index took a new entry on every transition of every task;
-- listing by state uses the primary key in id order with a filter, or the partial indexes.
DROP INDEX IF EXISTS orch_tasks_status;

-- The rescue index names the lease expiry (a task has one exactly while it is running).
DROP INDEX IF EXISTS orch_tasks_lease;
CREATE INDEX orch_tasks_lease ON orch_tasks (lease_expires_at, id)
    WHERE lease_expires_at IS NOT NULL;
