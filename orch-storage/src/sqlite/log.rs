//! The SQLite event log, lock table (with its waiter queue) and key-value space.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use orch_core::backend::{
    ChangeSignal, EventStore, LockAttempt, LockRequest, LockStore, LockTurn, NewLockWaiter,
    check_storage_key,
};
use orch_core::{
    Error, Event, EventKind, FencingToken, LockInfo, LockWaiter, LockWaiterId, NewEvent, Result,
    StorageProvider, TaskId, limits,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;

use super::tasks::insert_event;
use super::{SqliteBackend, json_from_db, now, time_from_db, time_to_db};
use crate::common::{check_name, corrupt, db_err, prefix_upper_bound};

fn event_from_row(operation: &'static str, row: &SqliteRow) -> Result<Event> {
    let get = |e: sqlx::Error| corrupt(operation, e);
    let seq: i64 = row.try_get("seq").map_err(get)?;
    let kind: String = row.try_get("kind").map_err(get)?;
    let task_id: Option<Uuid> = row.try_get("task_id").map_err(get)?;
    let data: String = row.try_get("data").map_err(get)?;
    let attempt: Option<i64> = row.try_get("attempt").map_err(get)?;
    Ok(Event {
        seq: u64::try_from(seq).map_err(|_| corrupt(operation, "negative sequence number"))?,
        kind: EventKind::from_str(&kind).map_err(|e| corrupt(operation, e))?,
        at: time_from_db(operation, row.try_get("at").map_err(get)?)?,
        task_id: task_id.map(TaskId),
        engine: row.try_get("core_id").map_err(get)?,
        attempt: attempt
            .map(|a| crate::common::to_u32(operation, "attempt", a))
            .transpose()?,
        data: json_from_db(operation, &data)?,
    })
}

#[async_trait]
impl EventStore for SqliteBackend {
    async fn append_event(&self, event: NewEvent) -> Result<Event> {
        const OP: &str = "append_event";
        let at = now();
        let mut tx = self.begin(OP).await?;
        let seq = insert_event(&mut tx, OP, &event, at).await?;
        tx.commit().await.map_err(db_err(OP))?;
        self.wake_events();
        Ok(Event {
            seq: u64::try_from(seq).map_err(|_| corrupt(OP, "negative sequence number"))?,
            kind: event.kind,
            at,
            task_id: event.task_id,
            engine: event.engine,
            attempt: event.attempt,
            data: event.data,
        })
    }

    async fn read_events(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        const OP: &str = "read_events";
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query("SELECT * FROM orch_events WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(i64::try_from(after).unwrap_or(i64::MAX))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.readers)
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
        // Through the index `orch_events_task` (migration 0004).
        let rows = sqlx::query(
            "SELECT * FROM orch_events WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(task_id.0)
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.readers)
        .await
        .map_err(db_err(OP))?;
        rows.iter().map(|row| event_from_row(OP, row)).collect()
    }

    async fn last_event_seq(&self) -> Result<u64> {
        const OP: &str = "last_event_seq";
        // sqlite_sequence keeps the highest number ever handed out, even once pruned.
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'orch_events'")
                .fetch_optional(&self.readers)
                .await
                .map_err(db_err(OP))?;
        Ok(seq.map_or(0, |seq| u64::try_from(seq).unwrap_or(0)))
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64> {
        const OP: &str = "prune_events";
        // In batches, each its own write transaction, so a large backlog never holds the one
        // writer (and so every claim and report) for long.
        let mut total = 0;
        loop {
            let mut tx = self.begin(OP).await?;
            let done = sqlx::query(
                "DELETE FROM orch_events WHERE seq IN \
                 (SELECT seq FROM orch_events WHERE at < ? ORDER BY seq LIMIT ?)",
            )
            .bind(time_to_db(before))
            .bind(crate::common::PRUNE_BATCH)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
            tx.commit().await.map_err(db_err(OP))?;
            total += done.rows_affected();
            if done.rows_affected() < crate::common::PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    fn event_wakeups(&self) -> Option<ChangeSignal> {
        Some(self.event_wakeups.clone())
    }
}

fn lock_from_row(operation: &'static str, row: &SqliteRow) -> Result<LockInfo> {
    let get = |e: sqlx::Error| corrupt(operation, e);
    let token: i64 = row.try_get("fencing_token").map_err(get)?;
    Ok(LockInfo {
        resource: row.try_get("resource").map_err(get)?,
        owner: row.try_get("owner").map_err(get)?,
        fencing_token: FencingToken(
            u64::try_from(token).map_err(|_| corrupt(operation, "negative fencing token"))?,
        ),
        acquired_at: time_from_db(operation, row.try_get("acquired_at").map_err(get)?)?,
        expires_at: time_from_db(operation, row.try_get("expires_at").map_err(get)?)?,
    })
}

fn expiry(now: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(ttl)
        .ok()
        .and_then(|delta| now.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn waiter_from_row(operation: &'static str, row: &SqliteRow) -> Result<LockWaiter> {
    let get = |e: sqlx::Error| corrupt(operation, e);
    let priority: i64 = row.try_get("priority").map_err(get)?;
    Ok(LockWaiter {
        resource: row.try_get("resource").map_err(get)?,
        waiter: LockWaiterId(row.try_get("waiter").map_err(get)?),
        owner: row.try_get("owner").map_err(get)?,
        priority: i32::try_from(priority)
            .map_err(|_| corrupt(operation, format!("priority = {priority}")))?,
        rank: row.try_get("rank").map_err(get)?,
        enqueued_at: time_from_db(operation, row.try_get("enqueued_at").map_err(get)?)?,
        expires_at: time_from_db(operation, row.try_get("expires_at").map_err(get)?)?,
    })
}

/// The unexpired grant of `resource` at `now`, read inside the write transaction.
async fn held_in(
    tx: &mut Transaction<'static, Sqlite>,
    operation: &'static str,
    resource: &str,
    now: DateTime<Utc>,
) -> Result<Option<LockInfo>> {
    let row = sqlx::query("SELECT * FROM orch_locks WHERE resource = ? AND expires_at > ?")
        .bind(resource)
        .bind(time_to_db(now))
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_err(operation))?;
    row.map(|row| lock_from_row(operation, &row)).transpose()
}

/// Grants `resource` (free or expired) to `owner` with the next fencing token.
async fn grant_in(
    tx: &mut Transaction<'static, Sqlite>,
    operation: &'static str,
    resource: &str,
    owner: &str,
    ttl: Duration,
    now: DateTime<Utc>,
) -> Result<LockInfo> {
    let token: i64 =
        sqlx::query_scalar("UPDATE orch_lock_tokens SET last = last + 1 RETURNING last")
            .fetch_one(&mut **tx)
            .await
            .map_err(db_err(operation))?;
    let row = sqlx::query(
        "INSERT INTO orch_locks (resource, owner, fencing_token, acquired_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (resource) DO UPDATE SET owner = ?2, \
         fencing_token = ?3, acquired_at = ?4, expires_at = ?5 RETURNING *",
    )
    .bind(resource)
    .bind(owner)
    .bind(token)
    .bind(time_to_db(now))
    .bind(time_to_db(expiry(now, ttl)))
    .fetch_one(&mut **tx)
    .await
    .map_err(db_err(operation))?;
    lock_from_row(operation, &row)
}

#[async_trait]
impl LockStore for SqliteBackend {
    async fn try_acquire_lock(
        &self,
        resource: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockAttempt> {
        const OP: &str = "try_acquire_lock";
        check_name("resource", resource, limits::MAX_RESOURCE_LEN)?;
        check_name("owner", owner, limits::MAX_RESOURCE_LEN)?;
        let now = now();
        let mut tx = self.begin(OP).await?;
        if let Some(current) = held_in(&mut tx, OP, resource, now).await? {
            return Ok(LockAttempt::Held(current));
        }
        let info = grant_in(&mut tx, OP, resource, owner, ttl, now).await?;
        tx.commit().await.map_err(db_err(OP))?;
        Ok(LockAttempt::Acquired(info))
    }

    async fn acquire_lock_in_turn(&self, request: &LockRequest) -> Result<LockTurn> {
        const OP: &str = "acquire_lock_in_turn";
        check_name("resource", &request.resource, limits::MAX_RESOURCE_LEN)?;
        check_name("owner", &request.owner, limits::MAX_RESOURCE_LEN)?;
        let now = now();
        let own = request.waiter.map(|w| w.0);
        let mut tx = self.begin(OP).await?;
        if let Some(current) = held_in(&mut tx, OP, &request.resource, now).await? {
            return Ok(LockTurn::Held(current));
        }
        // The first live entry ahead: `(rank, waiter)` before the request's, its own excepted;
        // a request without an entry comes after every entry of its rank.
        let ahead = sqlx::query(
            "SELECT * FROM orch_lock_queue WHERE resource = ?1 AND expires_at > ?2 \
             AND (?4 IS NULL OR waiter <> ?4) \
             AND (rank < ?3 OR (rank = ?3 AND (?4 IS NULL OR waiter < ?4))) \
             ORDER BY rank, waiter LIMIT 1",
        )
        .bind(&request.resource)
        .bind(time_to_db(now))
        .bind(request.rank)
        .bind(own)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err(OP))?;
        if let Some(row) = ahead {
            return Ok(LockTurn::Behind(waiter_from_row(OP, &row)?));
        }
        let info = grant_in(
            &mut tx,
            OP,
            &request.resource,
            &request.owner,
            request.ttl,
            now,
        )
        .await?;
        if let Some(own) = own {
            sqlx::query("DELETE FROM orch_lock_queue WHERE resource = ? AND waiter = ?")
                .bind(&request.resource)
                .bind(own)
                .execute(&mut *tx)
                .await
                .map_err(db_err(OP))?;
        }
        tx.commit().await.map_err(db_err(OP))?;
        Ok(LockTurn::Acquired(info))
    }

    async fn join_lock_queue(&self, waiter: &NewLockWaiter) -> Result<LockWaiter> {
        const OP: &str = "join_lock_queue";
        check_name("resource", &waiter.resource, limits::MAX_RESOURCE_LEN)?;
        check_name("owner", &waiter.owner, limits::MAX_RESOURCE_LEN)?;
        if waiter.ttl.is_zero() {
            return Err(Error::invalid("ttl", "must be greater than zero"));
        }
        let now = now();
        let mut tx = self.begin(OP).await?;
        sqlx::query(
            "DELETE FROM orch_lock_queue WHERE resource = ? AND expires_at <= ? AND waiter <> ?",
        )
        .bind(&waiter.resource)
        .bind(time_to_db(now))
        .bind(waiter.waiter.0)
        .execute(&mut *tx)
        .await
        .map_err(db_err(OP))?;
        let row = sqlx::query(
            "INSERT INTO orch_lock_queue \
                 (resource, waiter, owner, priority, rank, enqueued_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (resource, waiter) DO UPDATE SET \
                 owner = excluded.owner, priority = excluded.priority, rank = excluded.rank, \
                 expires_at = excluded.expires_at \
             RETURNING *",
        )
        .bind(&waiter.resource)
        .bind(waiter.waiter.0)
        .bind(&waiter.owner)
        .bind(waiter.priority)
        .bind(waiter.rank)
        .bind(time_to_db(now))
        .bind(time_to_db(expiry(now, waiter.ttl)))
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err(OP))?;
        let entry = waiter_from_row(OP, &row)?;
        tx.commit().await.map_err(db_err(OP))?;
        Ok(entry)
    }

    async fn leave_lock_queue(&self, resource: &str, waiter: LockWaiterId) -> Result<bool> {
        const OP: &str = "leave_lock_queue";
        let mut tx = self.begin(OP).await?;
        let done = sqlx::query("DELETE FROM orch_lock_queue WHERE resource = ? AND waiter = ?")
            .bind(resource)
            .bind(waiter.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        tx.commit().await.map_err(db_err(OP))?;
        Ok(done.rows_affected() > 0)
    }

    async fn lock_waiters(&self, resource: &str) -> Result<Vec<LockWaiter>> {
        const OP: &str = "lock_waiters";
        let rows = sqlx::query(
            "SELECT * FROM orch_lock_queue WHERE resource = ? AND expires_at > ? \
             ORDER BY rank, waiter",
        )
        .bind(resource)
        .bind(time_to_db(now()))
        .fetch_all(&self.readers)
        .await
        .map_err(db_err(OP))?;
        rows.iter().map(|row| waiter_from_row(OP, row)).collect()
    }

    async fn list_lock_waiters(&self) -> Result<Vec<LockWaiter>> {
        const OP: &str = "list_lock_waiters";
        let rows = sqlx::query(
            "SELECT * FROM orch_lock_queue WHERE expires_at > ? ORDER BY resource, rank, waiter",
        )
        .bind(time_to_db(now()))
        .fetch_all(&self.readers)
        .await
        .map_err(db_err(OP))?;
        rows.iter().map(|row| waiter_from_row(OP, row)).collect()
    }

    async fn release_lock(&self, resource: &str, owner: &str, token: u64) -> Result<bool> {
        const OP: &str = "release_lock";
        let Ok(token) = i64::try_from(token) else {
            return Ok(false);
        };
        let mut tx = self.begin(OP).await?;
        let done = sqlx::query(
            "DELETE FROM orch_locks WHERE resource = ? AND owner = ? AND fencing_token = ?",
        )
        .bind(resource)
        .bind(owner)
        .bind(token)
        .execute(&mut *tx)
        .await
        .map_err(db_err(OP))?;
        tx.commit().await.map_err(db_err(OP))?;
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
        let now = now();
        let mut tx = self.begin(OP).await?;
        let row = sqlx::query(
            "UPDATE orch_locks SET expires_at = ? WHERE resource = ? AND owner = ? \
             AND fencing_token = ? AND expires_at > ? RETURNING *",
        )
        .bind(time_to_db(expiry(now, ttl)))
        .bind(resource)
        .bind(owner)
        .bind(token)
        .bind(time_to_db(now))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err(OP))?;
        let info = row.map(|row| lock_from_row(OP, &row)).transpose()?;
        tx.commit().await.map_err(db_err(OP))?;
        Ok(info)
    }

    async fn lock_info(&self, resource: &str) -> Result<Option<LockInfo>> {
        const OP: &str = "lock_info";
        let row = sqlx::query("SELECT * FROM orch_locks WHERE resource = ? AND expires_at > ?")
            .bind(resource)
            .bind(time_to_db(now()))
            .fetch_optional(&self.readers)
            .await
            .map_err(db_err(OP))?;
        row.map(|row| lock_from_row(OP, &row)).transpose()
    }

    async fn list_locks(&self) -> Result<Vec<LockInfo>> {
        const OP: &str = "list_locks";
        let rows = sqlx::query("SELECT * FROM orch_locks WHERE expires_at > ? ORDER BY resource")
            .bind(time_to_db(now()))
            .fetch_all(&self.readers)
            .await
            .map_err(db_err(OP))?;
        rows.iter().map(|row| lock_from_row(OP, row)).collect()
    }

    async fn reclaim_expired_locks(&self) -> Result<Vec<LockInfo>> {
        const OP: &str = "reclaim_expired_locks";
        let now = time_to_db(now());
        let mut tx = self.begin(OP).await?;
        let rows = sqlx::query("DELETE FROM orch_locks WHERE expires_at <= ? RETURNING *")
            .bind(now)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        sqlx::query("DELETE FROM orch_lock_queue WHERE expires_at <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        let locks = rows
            .iter()
            .map(|row| lock_from_row(OP, row))
            .collect::<Result<Vec<_>>>()?;
        tx.commit().await.map_err(db_err(OP))?;
        Ok(locks)
    }
}

#[async_trait]
impl StorageProvider for SqliteBackend {
    async fn store(&self, key: &str, value: Vec<u8>) -> Result<()> {
        const OP: &str = "store";
        check_storage_key(key)?;
        let mut tx = self.begin(OP).await?;
        sqlx::query(
            "INSERT INTO orch_kv (key, value) VALUES (?, ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&mut *tx)
        .await
        .map_err(db_err(OP))?;
        tx.commit().await.map_err(db_err(OP))?;
        Ok(())
    }

    async fn retrieve(&self, key: &str) -> Result<Option<Vec<u8>>> {
        const OP: &str = "retrieve";
        check_storage_key(key)?;
        sqlx::query_scalar("SELECT value FROM orch_kv WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.readers)
            .await
            .map_err(db_err(OP))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        const OP: &str = "delete";
        check_storage_key(key)?;
        let mut tx = self.begin(OP).await?;
        let done = sqlx::query("DELETE FROM orch_kv WHERE key = ?")
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        tx.commit().await.map_err(db_err(OP))?;
        Ok(done.rows_affected() > 0)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        const OP: &str = "list";
        sqlx::query_scalar(
            "SELECT key FROM orch_kv WHERE key >= ?1 AND (?2 IS NULL OR key < ?2) ORDER BY key",
        )
        .bind(prefix)
        .bind(prefix_upper_bound(prefix))
        .fetch_all(&self.readers)
        .await
        .map_err(db_err(OP))
    }
}
