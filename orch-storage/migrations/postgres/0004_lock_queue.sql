-- The lock waiter queue (as ORCH-Next's `lock_queue` table): one row per waiter of every
-- process sharing this database, so the waiters of a resource are served by rank whichever
-- process they live in. A waiter refreshes its row while it waits; a row past `expires_at`
-- (by the database clock) blocks nobody and is deleted by the next join of its resource or by
-- `reclaim_expired_locks`. A new table only: nothing existing changes.
CREATE TABLE orch_lock_queue (
    resource    text        COLLATE "C" NOT NULL,
    -- Ties in rank go to the lower waiter id.
    waiter      uuid        NOT NULL,
    owner       text        NOT NULL,
    priority    integer     NOT NULL,
    -- Lower is served first: `enqueued_at - priority * aging_step` in microseconds, set by the
    -- lock manager.
    rank        bigint      NOT NULL,
    enqueued_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (resource, waiter)
);
-- The first live waiters of a resource in line.
CREATE INDEX orch_lock_queue_order ON orch_lock_queue (resource, rank, waiter);
