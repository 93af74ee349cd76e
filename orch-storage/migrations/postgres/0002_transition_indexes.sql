-- Fewer index entries per transition, and none that a transition prefers over the primary key.
--
-- The (status, id) index took a new entry on every transition of every task, and the planner
-- was drawn to it for "the running task with this id and lease" (scanning every running entry,
-- dead versions included) instead of the primary key. Listing by state uses the primary key in
-- id order with a filter, or the partial indexes below.
DROP INDEX IF EXISTS orch_tasks_status;

-- The same trap with the rescue index, whose predicate was `status = 'running'`: it now names
-- the lease expiry, which only the rescue query (and not a transition) constrains. A task has
-- a lease expiry exactly while it is running.
DROP INDEX IF EXISTS orch_tasks_lease;
CREATE INDEX orch_tasks_lease ON orch_tasks (lease_expires_at, id)
    WHERE lease_expires_at IS NOT NULL;

-- Unique indexes over the rows that have a value: a task without an idempotency key and an
-- event not yet numbered no longer take an index entry (a NULL one) on every insert or update.
ALTER TABLE orch_tasks DROP CONSTRAINT IF EXISTS orch_tasks_idempotency_key_key;
CREATE UNIQUE INDEX orch_tasks_idempotency ON orch_tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
ALTER TABLE orch_events DROP CONSTRAINT IF EXISTS orch_events_seq_key;
CREATE UNIQUE INDEX orch_events_seq ON orch_events (seq) WHERE seq IS NOT NULL;

-- Events are pruned by age: a BRIN index (a few pages, next to nothing per insert) finds the
-- old ones, since events are appended in time order.
DROP INDEX IF EXISTS orch_events_at;
CREATE INDEX orch_events_at ON orch_events USING brin (at);
