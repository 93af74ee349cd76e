//! The PostgreSQL event log, lock table (with its waiter queue) and key-value space.
//!
//! Fencing tokens: a grant takes its token from the sequence `orch_lock_tokens` while it holds
//! the resource's row (`ON CONFLICT ... DO UPDATE SET fencing_token = nextval(...)`), and a
//! release or a reclaimed expiry keeps the row, marking it free (`expires_at = '-infinity'`).
//! So a grant that drew a token in its `VALUES` before a concurrent grant committed, and
//! reaches the table after that one was released, finds the row and draws again: tokens of a
//! resource only grow. Free rows are forgotten a day after their last grant (reclaim), long
//! after any statement that could have drawn a token before it.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orch_core::backend::{
    ChangeSignal, EventStore, LockAttempt, LockRequest, LockStore, LockTurn, NewLockWaiter,
    check_storage_key,
};
use orch_core::{
    Error, Event, EventKind, FencingToken, LockInfo, LockWaiter, LockWaiterId, NewEvent, Result,
    StorageProvider, TaskId, limits,
};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::{PostgresBackend, count, db_micros};
use crate::common::{check_name, corrupt, db_err, prefix_upper_bound};

/// The events of one row of [`READ_EVENTS`]: one event each.
fn event_from_row(operation: &'static str, row: &PgRow) -> Result<Event> {
    let get = |e: sqlx::Error| corrupt(operation, e);
    let seq: i64 = row.try_get("seq").map_err(get)?;
    let kind: String = row.try_get("kind").map_err(get)?;
    let task_id: Option<Uuid> = row.try_get("task_id").map_err(get)?;
    let attempt: Option<i32> = row.try_get("attempt").map_err(get)?;
    let data: Option<serde_json::Value> = row.try_get("data").map_err(get)?;
    Ok(Event {
        seq: count(seq),
        kind: EventKind::from_str(&kind).map_err(|e| corrupt(operation, e))?,
        at: row.try_get("at").map_err(get)?,
        task_id: task_id.map(TaskId),
        engine: row.try_get("core_id").map_err(get)?,
        attempt: attempt
            .map(|a| crate::common::to_u32(operation, "attempt", i64::from(a)))
            .transpose()?,
        data: data.ok_or_else(|| corrupt(operation, "an event row lacks data"))?,
    })
}

/// Up to `$2` numbered events after `$1`, in order, one per row. The rows holding them are
/// those whose numbers meet the window `$1 + 1 ..= $1 + $2` (a row holds at most 256, so its
/// last number is under `$1 + $2 + 256`: a bounded range of the `last_seq` index), and the
/// first row past the window, in case the window holds none (pruned, or numbers lost to a
/// race): no row between the two can hold an event.
const READ_EVENTS: &str = "\
SELECT b.seq + e.i - 1 AS seq, b.at, e.kind, e.task_id, e.core_id, e.attempt,
       b.data -> (e.i::int - 1) AS data
FROM (
    (SELECT * FROM orch_event_batches
     WHERE last_seq > $1 AND last_seq < $1 + $2 + 256 AND seq <= $1 + $2)
    UNION ALL
    (SELECT * FROM orch_event_batches WHERE last_seq > $1 AND seq > $1 + $2
     ORDER BY last_seq LIMIT 1)
) AS b
CROSS JOIN LATERAL unnest(b.kinds, b.task_ids, b.core_ids, b.attempts)
    WITH ORDINALITY AS e(kind, task_id, core_id, attempt, i)
WHERE b.seq + e.i - 1 > $1
ORDER BY 1
LIMIT $2";

/// Up to `$3` numbered events of task `$1` after `$2`, in order. The rows holding them come
/// from the index over each row's task ids (`orch_event_batches_tasks`, partial on numbered
/// rows, migration 0005); each row's events are unnested and those of other tasks dropped.
const READ_TASK_EVENTS: &str = "\
SELECT b.seq + e.i - 1 AS seq, b.at, e.kind, e.task_id, e.core_id, e.attempt,
       b.data -> (e.i::int - 1) AS data
FROM orch_event_batches b
CROSS JOIN LATERAL unnest(b.kinds, b.task_ids, b.core_ids, b.attempts)
    WITH ORDINALITY AS e(kind, task_id, core_id, attempt, i)
WHERE b.task_ids @> ARRAY[$1::uuid] AND b.seq IS NOT NULL AND b.last_seq > $2
  AND e.task_id = $1 AND b.seq + e.i - 1 > $2
ORDER BY 1
LIMIT $3";

#[async_trait]
impl EventStore for PostgresBackend {
    async fn append_event(&self, event: NewEvent) -> Result<Event> {
        const OP: &str = "append_event";
        // `jsonb` refuses the NUL character: such data is stored with U+FFFD in its place (as
        // results and errors are), and returned as stored.
        let mut event = event;
        if orch_core::check_json("data", &event.data).is_err() {
            event.data = super::tasks::storable_value(event.data);
        }
        let hint = self.event_hint();
        let id: i64 = sqlx::query_scalar(
            "WITH ins AS (INSERT INTO orch_event_batches \
             (n, at, kinds, task_ids, core_ids, attempts, data) \
             VALUES (1, now(), ARRAY[$1], ARRAY[$2::uuid], ARRAY[$3], ARRAY[$4::int4], \
                     jsonb_build_array($5::text::jsonb)) RETURNING id) \
             SELECT id, (SELECT 1 FROM pg_notify('orch_changes', $6) WHERE $6::text IS NOT NULL) \
             AS notified FROM ins",
        )
        .bind(event.kind.as_str())
        .bind(event.task_id.map(|id| id.0))
        .bind(event.engine.as_deref())
        .bind(event.attempt.map(|a| i32::try_from(a).unwrap_or(i32::MAX)))
        .bind(event.data.to_string())
        .bind(&hint)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err(OP))?;
        self.deferred(&hint);
        self.wake_events();
        // Committed: our numbering pass covers it, or one running elsewhere does, or (if that
        // one started before our commit) the next pass does.
        let deadline = tokio::time::Instant::now() + APPEND_NUMBERING_TIMEOUT;
        loop {
            let ran = self.number_events(OP).await?;
            let row = sqlx::query(
                "SELECT seq, at FROM orch_event_batches WHERE id = $1 AND seq IS NOT NULL",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err(OP))?;
            if let Some(row) = row {
                let get = |e: sqlx::Error| corrupt(OP, e);
                let seq: i64 = row.try_get("seq").map_err(get)?;
                return Ok(Event {
                    seq: count(seq),
                    kind: event.kind,
                    at: row.try_get("at").map_err(get)?,
                    task_id: event.task_id,
                    engine: event.engine,
                    attempt: event.attempt,
                    data: event.data,
                });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(orch_core::Error::backend(
                    OP,
                    "the event was stored but not numbered in time; it will appear in the log",
                ));
            }
            if !ran {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }

    async fn read_events(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        const OP: &str = "read_events";
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.number_committed(OP).await?;
        // Bounded so that `after + limit + 256` stays a bigint; no log holds 2^40 events, and
        // none is numbered past 2^62.
        let rows = sqlx::query(READ_EVENTS)
            .bind(i64::try_from(after).unwrap_or(i64::MAX).min(1 << 62))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX).min(1 << 40))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err(OP))?;
        rows.iter().map(|row| event_from_row(OP, row)).collect()
    }

    async fn read_task_events(
        &self,
        task_id: TaskId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        const OP: &str = "read_task_events";
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.number_events(OP).await?;
        let rows = sqlx::query(READ_TASK_EVENTS)
            .bind(task_id.0)
            .bind(i64::try_from(after).unwrap_or(i64::MAX))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err(OP))?;
        rows.iter().map(|row| event_from_row(OP, row)).collect()
    }

    async fn last_event_seq(&self) -> Result<u64> {
        const OP: &str = "last_event_seq";
        self.number_committed(OP).await?;
        self.last_numbered(OP).await
    }

    /// The counter as it stands: what was numbered so far. Events committed later are
    /// numbered above it; events not yet numbered are left for the first reader.
    async fn tail_start_seq(&self) -> Result<u64> {
        self.last_numbered("tail_start_seq").await
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64> {
        // Unnumbered events stay until numbered, so no reader misses them: what has committed
        // is numbered first (where no reader ever comes, this pass is what numbers the log).
        self.number_committed("prune_events").await?;
        // In batches of one statement each, so no single statement locks or writes much (in no
        // particular order: every event older than `before` is gone when the loop ends).
        let mut total = 0;
        loop {
            let (rows, events): (i64, i64) = sqlx::query_as(
                "WITH picked AS (SELECT id FROM orch_event_batches \
                 WHERE at < $1 AND seq IS NOT NULL LIMIT $2 FOR UPDATE SKIP LOCKED), \
                 gone AS (DELETE FROM orch_event_batches USING picked \
                 WHERE orch_event_batches.id = picked.id RETURNING n) \
                 SELECT count(*), coalesce(sum(n), 0)::int8 FROM gone",
            )
            .bind(before)
            .bind(crate::common::PRUNE_BATCH)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err("prune_events"))?;
            total += count(events);
            if rows < crate::common::PRUNE_BATCH {
                return Ok(total);
            }
        }
    }

    fn event_wakeups(&self) -> Option<ChangeSignal> {
        Some(self.event_wakeups.clone())
    }
}

impl PostgresBackend {
    /// The event counter: the highest sequence number given so far.
    async fn last_numbered(&self, operation: &'static str) -> Result<u64> {
        let last: i64 = sqlx::query_scalar("SELECT last FROM orch_event_counter WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err(operation))?;
        Ok(count(last))
    }
}

fn lock_from_row(operation: &'static str, row: &PgRow) -> Result<LockInfo> {
    let get = |e: sqlx::Error| corrupt(operation, e);
    let token: i64 = row.try_get("fencing_token").map_err(get)?;
    Ok(LockInfo {
        resource: row.try_get("resource").map_err(get)?,
        owner: row.try_get("owner").map_err(get)?,
        fencing_token: FencingToken(count(token)),
        acquired_at: row.try_get("acquired_at").map_err(get)?,
        expires_at: row.try_get("expires_at").map_err(get)?,
    })
}

fn waiter_from_row(operation: &'static str, row: &PgRow) -> Result<LockWaiter> {
    let get = |e: sqlx::Error| corrupt(operation, e);
    Ok(LockWaiter {
        resource: row.try_get("resource").map_err(get)?,
        waiter: LockWaiterId(row.try_get("waiter").map_err(get)?),
        owner: row.try_get("owner").map_err(get)?,
        priority: row.try_get("priority").map_err(get)?,
        rank: row.try_get("rank").map_err(get)?,
        enqueued_at: row.try_get("enqueued_at").map_err(get)?,
        expires_at: row.try_get("expires_at").map_err(get)?,
    })
}

/// An acquisition in turn, as one statement: `ahead` is the first live queue entry before the
/// request (`$4` rank, `$5` the request's own entry or NULL; a request without one comes after
/// every entry of its rank); `granted` takes a free or expired lock only when nothing is ahead
/// (the upsert waits for a concurrent grant of the same resource and then sees it unexpired);
/// `dequeued` deletes the request's own entry with the grant. One row per outcome: `acquired`,
/// else `held` (read in the statement's snapshot: a lock granted by a transaction that
/// committed during the statement shows no row at all, and the caller asks again) and
/// `behind`.
const ACQUIRE_IN_TURN: &str = "\
WITH ahead AS (
    SELECT * FROM orch_lock_queue
    WHERE resource = $1 AND expires_at > now() AND waiter IS DISTINCT FROM $5
      AND (rank < $4 OR (rank = $4 AND ($5::uuid IS NULL OR waiter < $5)))
    ORDER BY rank, waiter
    LIMIT 1
), granted AS (
    INSERT INTO orch_locks (resource, owner, fencing_token, acquired_at, expires_at)
    SELECT $1, $2, nextval('orch_lock_tokens'), now(), now() + $3::int8 * interval '1 microsecond'
    WHERE NOT EXISTS (SELECT 1 FROM ahead)
    ON CONFLICT (resource) DO UPDATE SET owner = EXCLUDED.owner,
        fencing_token = nextval('orch_lock_tokens'), acquired_at = EXCLUDED.acquired_at,
        expires_at = EXCLUDED.expires_at
    WHERE orch_locks.expires_at <= now()
    RETURNING *
), dequeued AS (
    DELETE FROM orch_lock_queue
    WHERE resource = $1 AND waiter = $5 AND EXISTS (SELECT 1 FROM granted)
)
SELECT 'acquired' AS outcome, resource, owner, fencing_token, acquired_at, expires_at,
       NULL::uuid AS waiter, NULL::integer AS priority, NULL::bigint AS rank,
       NULL::timestamptz AS enqueued_at
FROM granted
UNION ALL
SELECT 'held', resource, owner, fencing_token, acquired_at, expires_at, NULL, NULL, NULL, NULL
FROM orch_locks
WHERE resource = $1 AND expires_at > now() AND NOT EXISTS (SELECT 1 FROM granted)
UNION ALL
SELECT 'behind', resource, owner, NULL, NULL, expires_at, waiter, priority, rank, enqueued_at
FROM ahead";

/// Joins or refreshes a queue entry, deleting the resource's other expired entries.
const JOIN_QUEUE: &str = "\
WITH expired AS (
    DELETE FROM orch_lock_queue WHERE resource = $1 AND expires_at <= now() AND waiter <> $2
)
INSERT INTO orch_lock_queue (resource, waiter, owner, priority, rank, enqueued_at, expires_at)
VALUES ($1, $2, $3, $4, $5, now(), now() + $6::int8 * interval '1 microsecond')
ON CONFLICT (resource, waiter) DO UPDATE SET owner = EXCLUDED.owner,
    priority = EXCLUDED.priority, rank = EXCLUDED.rank, expires_at = EXCLUDED.expires_at
RETURNING *";

/// How long `append_event` waits for its event to be numbered.
const APPEND_NUMBERING_TIMEOUT: Duration = Duration::from_secs(10);

/// How often an acquisition retries when the lock it saw held vanished before it could read
/// the holder (released in between).
const ACQUIRE_TRIES: usize = 5;

#[async_trait]
impl LockStore for PostgresBackend {
    async fn try_acquire_lock(
        &self,
        resource: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockAttempt> {
        const OP: &str = "try_acquire_lock";
        check_name("resource", resource, limits::MAX_RESOURCE_LEN)?;
        check_name("owner", owner, limits::MAX_RESOURCE_LEN)?;
        for _ in 0..ACQUIRE_TRIES {
            let granted = sqlx::query(
                "INSERT INTO orch_locks (resource, owner, fencing_token, acquired_at, expires_at) \
                 VALUES ($1, $2, nextval('orch_lock_tokens'), now(), \
                         now() + $3::int8 * interval '1 microsecond') \
                 ON CONFLICT (resource) DO UPDATE SET owner = EXCLUDED.owner, \
                     fencing_token = nextval('orch_lock_tokens'), \
                     acquired_at = EXCLUDED.acquired_at, expires_at = EXCLUDED.expires_at \
                 WHERE orch_locks.expires_at <= now() \
                 RETURNING *",
            )
            .bind(resource)
            .bind(owner)
            .bind(db_micros(ttl))
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err(OP))?;
            if let Some(row) = granted {
                return Ok(LockAttempt::Acquired(lock_from_row(OP, &row)?));
            }
            let held =
                sqlx::query("SELECT * FROM orch_locks WHERE resource = $1 AND expires_at > now()")
                    .bind(resource)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err(OP))?;
            if let Some(row) = held {
                return Ok(LockAttempt::Held(lock_from_row(OP, &row)?));
            }
        }
        Err(Error::backend(
            OP,
            format!("lock {resource:?} changed hands {ACQUIRE_TRIES} times during one attempt"),
        ))
    }

    async fn release_lock(&self, resource: &str, owner: &str, token: u64) -> Result<bool> {
        let Ok(token) = i64::try_from(token) else {
            return Ok(false);
        };
        // The row stays, marked free: a grant that took its token before this one and reaches
        // the table only now then finds it and takes a new token (see the module docs).
        let done = sqlx::query(
            "UPDATE orch_locks SET expires_at = '-infinity' \
             WHERE resource = $1 AND owner = $2 AND fencing_token = $3 \
             AND expires_at > '-infinity'",
        )
        .bind(resource)
        .bind(owner)
        .bind(token)
        .execute(&self.pool)
        .await
        .map_err(db_err("release_lock"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn extend_lock(
        &self,
        resource: &str,
        owner: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<Option<LockInfo>> {
        const OP: &str = "extend_lock";
        let Ok(token) = i64::try_from(token) else {
            return Ok(None);
        };
        let row = sqlx::query(
            "UPDATE orch_locks SET expires_at = now() + $4::int8 * interval '1 microsecond' \
             WHERE resource = $1 AND owner = $2 AND fencing_token = $3 AND expires_at > now() \
             RETURNING *",
        )
        .bind(resource)
        .bind(owner)
        .bind(token)
        .bind(db_micros(ttl))
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err(OP))?;
        row.map(|row| lock_from_row(OP, &row)).transpose()
    }

    async fn lock_info(&self, resource: &str) -> Result<Option<LockInfo>> {
        const OP: &str = "lock_info";
        let row =
            sqlx::query("SELECT * FROM orch_locks WHERE resource = $1 AND expires_at > now()")
                .bind(resource)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err(OP))?;
        row.map(|row| lock_from_row(OP, &row)).transpose()
    }

    async fn list_locks(&self) -> Result<Vec<LockInfo>> {
        const OP: &str = "list_locks";
        let rows =
            sqlx::query("SELECT * FROM orch_locks WHERE expires_at > now() ORDER BY resource")
                .fetch_all(&self.pool)
                .await
                .map_err(db_err(OP))?;
        rows.iter().map(|row| lock_from_row(OP, row)).collect()
    }

    async fn reclaim_expired_locks(&self) -> Result<Vec<LockInfo>> {
        const OP: &str = "reclaim_expired_locks";
        let rows = sqlx::query(
            "WITH waiters AS (DELETE FROM orch_lock_queue WHERE expires_at <= now()), \
             forgotten AS (DELETE FROM orch_locks WHERE expires_at = '-infinity' \
                 AND acquired_at < now() - interval '1 day'), \
             expired AS (SELECT * FROM orch_locks \
                 WHERE expires_at <= now() AND expires_at > '-infinity' FOR UPDATE SKIP LOCKED), \
             freed AS (UPDATE orch_locks l SET expires_at = '-infinity' FROM expired e \
                 WHERE l.resource = e.resource) \
             SELECT * FROM expired ORDER BY resource",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err(OP))?;
        rows.iter().map(|row| lock_from_row(OP, row)).collect()
    }

    async fn acquire_lock_in_turn(&self, request: &LockRequest) -> Result<LockTurn> {
        const OP: &str = "acquire_lock_in_turn";
        check_name("resource", &request.resource, limits::MAX_RESOURCE_LEN)?;
        check_name("owner", &request.owner, limits::MAX_RESOURCE_LEN)?;
        for _ in 0..ACQUIRE_TRIES {
            let rows = sqlx::query(ACQUIRE_IN_TURN)
                .bind(&request.resource)
                .bind(&request.owner)
                .bind(db_micros(request.ttl))
                .bind(request.rank)
                .bind(request.waiter.map(|w| w.0))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err(OP))?;
            let outcome = |row: &PgRow| -> Result<String> {
                row.try_get("outcome").map_err(|e| corrupt(OP, e))
            };
            let mut behind = None;
            let mut held = None;
            for row in &rows {
                match outcome(row)?.as_str() {
                    "acquired" => return Ok(LockTurn::Acquired(lock_from_row(OP, row)?)),
                    "held" => held = Some(row),
                    _ => behind = Some(row),
                }
            }
            if let Some(row) = held {
                return Ok(LockTurn::Held(lock_from_row(OP, row)?));
            }
            if let Some(row) = behind {
                return Ok(LockTurn::Behind(waiter_from_row(OP, row)?));
            }
        }
        Err(Error::backend(
            OP,
            format!(
                "lock {:?} changed hands {ACQUIRE_TRIES} times during one attempt",
                request.resource
            ),
        ))
    }

    async fn join_lock_queue(&self, waiter: &NewLockWaiter) -> Result<LockWaiter> {
        const OP: &str = "join_lock_queue";
        check_name("resource", &waiter.resource, limits::MAX_RESOURCE_LEN)?;
        check_name("owner", &waiter.owner, limits::MAX_RESOURCE_LEN)?;
        if waiter.ttl.is_zero() {
            return Err(Error::invalid("ttl", "must be greater than zero"));
        }
        let row = sqlx::query(JOIN_QUEUE)
            .bind(&waiter.resource)
            .bind(waiter.waiter.0)
            .bind(&waiter.owner)
            .bind(waiter.priority)
            .bind(waiter.rank)
            .bind(db_micros(waiter.ttl))
            .fetch_one(&self.pool)
            .await
            .map_err(db_err(OP))?;
        waiter_from_row(OP, &row)
    }

    async fn leave_lock_queue(&self, resource: &str, waiter: LockWaiterId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM orch_lock_queue WHERE resource = $1 AND waiter = $2")
            .bind(resource)
            .bind(waiter.0)
            .execute(&self.pool)
            .await
            .map_err(db_err("leave_lock_queue"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn lock_waiters(&self, resource: &str) -> Result<Vec<LockWaiter>> {
        const OP: &str = "lock_waiters";
        let rows = sqlx::query(
            "SELECT * FROM orch_lock_queue WHERE resource = $1 AND expires_at > now() \
             ORDER BY rank, waiter",
        )
        .bind(resource)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err(OP))?;
        rows.iter().map(|row| waiter_from_row(OP, row)).collect()
    }

    async fn list_lock_waiters(&self) -> Result<Vec<LockWaiter>> {
        const OP: &str = "list_lock_waiters";
        let rows = sqlx::query(
            "SELECT * FROM orch_lock_queue WHERE expires_at > now() \
             ORDER BY resource, rank, waiter",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err(OP))?;
        rows.iter().map(|row| waiter_from_row(OP, row)).collect()
    }
}

#[async_trait]
impl StorageProvider for PostgresBackend {
    async fn store(&self, key: &str, value: Vec<u8>) -> Result<()> {
        check_storage_key(key)?;
        sqlx::query(
            "INSERT INTO orch_kv (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await
        .map_err(db_err("store"))?;
        Ok(())
    }

    async fn retrieve(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_storage_key(key)?;
        sqlx::query_scalar("SELECT value FROM orch_kv WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("retrieve"))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        check_storage_key(key)?;
        let done = sqlx::query("DELETE FROM orch_kv WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(db_err("delete"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT key FROM orch_kv WHERE key >= $1 AND ($2::text IS NULL OR key < $2) \
             ORDER BY key",
        )
        .bind(prefix)
        .bind(prefix_upper_bound(prefix))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("list"))
    }
}
