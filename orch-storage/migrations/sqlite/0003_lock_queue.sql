-- The lock waiter queue (as ORCH-Next's `lock_queue` table): one row per waiter of every
-- process sharing this file, so the waiters of a resource are served by rank whichever process
-- they live in. A waiter refreshes its row while it waits; a row past `expires_at` blocks
-- nobody and is deleted by the next join of its resource or by `reclaim_expired_locks`. A
-- new table only: nothing existing changes.
CREATE TABLE orch_lock_queue (
    resource    TEXT    NOT NULL,
    -- The waiter's UUID (16 bytes): ties in rank go to the lower one.
    waiter      BLOB    NOT NULL,
    owner       TEXT    NOT NULL,
    priority    INTEGER NOT NULL,
    -- Lower is served first: `enqueued_at - priority * aging_step` in microseconds, set by the
    -- lock manager.
    rank        INTEGER NOT NULL,
    enqueued_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (resource, waiter)
) WITHOUT ROWID;
-- The first live waiters of a resource in line.
CREATE INDEX orch_lock_queue_order ON orch_lock_queue (resource, rank, waiter);
