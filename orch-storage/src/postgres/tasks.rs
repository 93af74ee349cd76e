//! The PostgreSQL task queue: one statement per transition, each writing its own events.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orch_core::{
    AttemptOutcome, ChangeSignal, Claimed, Created, Error, EventKind, LeaseToken, NewTask,
    Resolution, Result, Task, TaskFilter, TaskId, TaskStatus, TaskStore,
};
use serde_json::{Value, json};
use sqlx::Row;
use uuid::Uuid;

use super::{PostgresBackend, count, db_micros, task_from_row, tasks_from_rows};
use crate::common::{corrupt, db_err, micros};

/// Inserts a batch in input order, skipping tasks whose idempotency key exists, and appends a
/// `task.queued` event per inserted task.
const CREATE_TASKS: &str = "\
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::int8[], $5::int4[],
                         $6::timestamptz[], $7::int8[], $8::text[], $9::text[], $10::text[],
                         $11::text[])
        WITH ORDINALITY AS u(id, core_id, priority, timeout_us, max_attempts, not_before,
                             delay_us, payload, metadata, idempotency_key, locks, ord)
), ins AS (
    INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, attempt,
                            run_at, created_at, updated_at, payload, metadata, idempotency_key,
                            locks)
    SELECT id, core_id, 'queued', priority, timeout_us, max_attempts, 0,
           greatest(now() + delay_us * interval '1 microsecond', not_before), now(), now(),
           payload::jsonb, metadata::jsonb, idempotency_key,
           ARRAY(SELECT jsonb_array_elements_text(locks::jsonb))
    FROM input ORDER BY ord
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING *
), ev AS (
    INSERT INTO orch_events (kind, at, task_id, core_id, attempt, data)
    SELECT 'task.queued', now(), ins.id, ins.core_id, ins.attempt, 'null'::jsonb
    FROM ins JOIN input ON input.id = ins.id ORDER BY input.ord
)
SELECT * FROM ins";

/// Leases up to `$2` available tasks of core `$1` in claim order for `$3` microseconds.
const CLAIM_TASKS: &str = "\
WITH picked AS (
    SELECT id FROM orch_tasks
    WHERE status = 'queued' AND core_id = $1 AND run_at <= now()
    ORDER BY priority DESC, run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE orch_tasks t SET status = 'running', attempt = t.attempt + 1, started_at = now(),
        updated_at = now(), lease_token = gen_random_uuid(),
        lease_expires_at = now() + $3::int8 * interval '1 microsecond'
    FROM picked WHERE t.id = picked.id
    RETURNING t.*
), ev AS (
    INSERT INTO orch_events (kind, at, task_id, core_id, attempt, data)
    SELECT 'task.started', now(), id, core_id, attempt, 'null'::jsonb
    FROM claimed ORDER BY priority DESC, run_at, id
)
SELECT * FROM claimed ORDER BY priority DESC, run_at, id";

/// Ends the attempt held with lease `$2` on task `$1`. `$3` target state; `$4` retry delay;
/// `$5` 1 to give the attempt back; `$6` result; `$7` error; `$8` whether the error is the
/// timeout message; `$9` event kind; `$10` whether the event data holds the error (else it is
/// null); `$11` extra event data fields.
const FINISH_ATTEMPT: &str = "\
WITH t AS (
    UPDATE orch_tasks SET
        status = $3::text,
        updated_at = now(),
        finished_at = CASE WHEN $3::text = 'queued' THEN finished_at ELSE now() END,
        run_at = CASE WHEN $3::text = 'queued'
                      THEN now() + $4::int8 * interval '1 microsecond' ELSE run_at END,
        attempt = greatest(attempt - $5::int4, 0),
        result = coalesce($6::text::jsonb, result),
        error = CASE WHEN $8::bool THEN 'attempt ' || attempt || ' timed out'
                     ELSE coalesce($7::text, error) END,
        lease_token = NULL,
        lease_expires_at = NULL
    WHERE id = $1 AND status = 'running' AND lease_token = $2
    RETURNING *
), ev AS (
    INSERT INTO orch_events (kind, at, task_id, core_id, attempt, data)
    SELECT $9::text, now(), t.id, t.core_id, t.attempt,
           CASE WHEN $10::bool THEN jsonb_build_object('error', t.error) || $11::text::jsonb
                ELSE 'null'::jsonb END
    FROM t
)
SELECT * FROM t";

/// Finishes task `$1` (queued or running) as `$2` with result `$3` / error `$4`, appending an
/// event of kind `$5` with `from` and the extra fields `$6`. Returns the old state, and the
/// task when the transition was legal.
const FINISH_TASK: &str = "\
WITH old AS (
    SELECT id, status FROM orch_tasks WHERE id = $1 FOR UPDATE
), t AS (
    UPDATE orch_tasks SET status = $2::text, updated_at = now(), finished_at = now(),
        result = coalesce($3::text::jsonb, orch_tasks.result),
        error = coalesce($4::text, orch_tasks.error),
        lease_token = NULL, lease_expires_at = NULL
    FROM old WHERE orch_tasks.id = old.id AND old.status IN ('queued', 'running')
    RETURNING orch_tasks.*
), ev AS (
    INSERT INTO orch_events (kind, at, task_id, core_id, attempt, data)
    SELECT $5::text, now(), t.id, t.core_id, t.attempt,
           jsonb_build_object('from', old.status) || $6::text::jsonb
    FROM t CROSS JOIN old
)
SELECT old.status AS from_status, t.* FROM old LEFT JOIN t ON true";

/// Takes back up to `$1` running tasks whose lease expired by the database clock.
const RESCUE_EXPIRED: &str = "\
WITH picked AS (
    SELECT id, lease_expires_at AS old_expiry FROM orch_tasks
    WHERE status = 'running' AND lease_expires_at <= now()
    ORDER BY lease_expires_at, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), t AS (
    UPDATE orch_tasks SET
        status = CASE WHEN attempt < max_attempts THEN 'queued' ELSE 'failed' END,
        run_at = CASE WHEN attempt < max_attempts THEN now() ELSE run_at END,
        finished_at = CASE WHEN attempt < max_attempts THEN finished_at ELSE now() END,
        updated_at = now(),
        error = CASE WHEN attempt < max_attempts
                     THEN 'lease expired during attempt ' || attempt
                     ELSE 'lease expired during final attempt ' || attempt END,
        lease_token = NULL,
        lease_expires_at = NULL
    FROM picked WHERE orch_tasks.id = picked.id
    RETURNING orch_tasks.*, picked.old_expiry
), ev AS (
    INSERT INTO orch_events (kind, at, task_id, core_id, attempt, data)
    SELECT e.kind, now(), t.id, t.core_id, t.attempt, e.data
    FROM t CROSS JOIN LATERAL (VALUES
        (1, 'task.rescued', jsonb_build_object('will_retry', t.status = 'queued')),
        (2, 'task.failed', jsonb_build_object('error', t.error))
    ) AS e(n, kind, data)
    WHERE e.n = 1 OR t.status = 'failed'
    ORDER BY t.old_expiry, t.id, e.n
)
SELECT * FROM t ORDER BY old_expiry, id";

/// An error message PostgreSQL can store: text columns refuse NUL characters, which an engine's
/// message may contain, and refusing the report would leave the task running until its lease
/// expired. NUL becomes U+FFFD.
fn storable(error: String) -> String {
    if error.contains('\0') {
        error.replace('\0', "\u{FFFD}")
    } else {
        error
    }
}

fn terminal_event_kind(status: TaskStatus) -> EventKind {
    match status {
        TaskStatus::Succeeded => EventKind::TaskSucceeded,
        TaskStatus::Failed => EventKind::TaskFailed,
        TaskStatus::TimedOut => EventKind::TaskTimedOut,
        _ => EventKind::TaskCancelled,
    }
}

impl PostgresBackend {
    /// Runs [`FINISH_TASK`]: cancel or resolve.
    async fn finish_task(
        &self,
        operation: &'static str,
        id: TaskId,
        to: TaskStatus,
        result: Option<Value>,
        error: Option<String>,
        extra: Value,
    ) -> Result<Task> {
        let row = sqlx::query(FINISH_TASK)
            .bind(id.0)
            .bind(to.as_str())
            .bind(result.map(|r| r.to_string()))
            .bind(error)
            .bind(terminal_event_kind(to).as_str())
            .bind(extra.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err(operation))?
            .ok_or(Error::TaskNotFound(id))?;
        let changed: Option<Uuid> = row.try_get("id").map_err(|e| corrupt(operation, e))?;
        if changed.is_none() {
            let from: String = row
                .try_get("from_status")
                .map_err(|e| corrupt(operation, e))?;
            let from: TaskStatus = from.parse().map_err(|e| corrupt(operation, e))?;
            return Err(Error::IllegalTransition {
                task_id: id,
                from,
                to,
            });
        }
        self.wake_events();
        task_from_row(operation, &row).map(|(task, _)| task)
    }
}

#[async_trait]
impl TaskStore for PostgresBackend {
    async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<Created>> {
        const OP: &str = "create_tasks";
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let n = tasks.len();
        let (mut ids, mut core_ids, mut priorities, mut timeouts, mut max_attempts) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut not_before, mut delays, mut payloads, mut metadata, mut keys, mut locks) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for task in &tasks {
            ids.push(task.id.0);
            core_ids.push(task.core_id.as_str());
            priorities.push(task.priority);
            timeouts.push(micros(task.timeout));
            max_attempts.push(i32::try_from(task.max_attempts).unwrap_or(i32::MAX));
            not_before.push(task.not_before);
            delays.push(db_micros(task.delay));
            payloads.push(task.payload.to_string());
            metadata.push(task.metadata.to_string());
            keys.push(task.idempotency_key.as_deref());
            locks.push(serde_json::to_string(&task.locks)?);
        }
        let rows = sqlx::query(CREATE_TASKS)
            .bind(&ids)
            .bind(&core_ids)
            .bind(&priorities)
            .bind(&timeouts)
            .bind(&max_attempts)
            .bind(&not_before)
            .bind(&delays)
            .bind(&payloads)
            .bind(&metadata)
            .bind(&keys)
            .bind(&locks)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err(OP))?;
        let mut inserted: HashMap<Uuid, Task> = HashMap::with_capacity(rows.len());
        for task in tasks_from_rows(OP, &rows)? {
            inserted.insert(task.id.0, task);
        }
        let mut existing: HashMap<String, Task> = HashMap::new();
        let missing: Vec<&str> = tasks
            .iter()
            .filter(|t| !inserted.contains_key(&t.id.0))
            .filter_map(|t| t.idempotency_key.as_deref())
            .collect();
        if !missing.is_empty() {
            let rows = sqlx::query("SELECT * FROM orch_tasks WHERE idempotency_key = ANY($1)")
                .bind(&missing)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err(OP))?;
            for task in tasks_from_rows(OP, &rows)? {
                if let Some(key) = task.idempotency_key.clone() {
                    existing.insert(key, task);
                }
            }
        }
        let mut out = Vec::with_capacity(n);
        for new in &tasks {
            if let Some(task) = inserted.get(&new.id.0) {
                out.push(Created {
                    task: task.clone(),
                    created: true,
                });
                continue;
            }
            let task = new
                .idempotency_key
                .as_ref()
                .and_then(|key| existing.get(key))
                .ok_or_else(|| {
                    Error::backend(OP, format!("task {} was neither stored nor found", new.id))
                })?;
            out.push(Created {
                task: task.clone(),
                created: false,
            });
        }
        if !inserted.is_empty() {
            self.wake_tasks();
            self.wake_events();
        }
        Ok(out)
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
        const OP: &str = "get_task";
        let row = sqlx::query("SELECT * FROM orch_tasks WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err(OP))?;
        row.map(|row| task_from_row(OP, &row).map(|(task, _)| task))
            .transpose()
    }

    async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<Task>> {
        const OP: &str = "list_tasks";
        let limit = i64::try_from(filter.effective_limit()).unwrap_or(1000);
        let rows = sqlx::query(
            "SELECT * FROM orch_tasks WHERE ($1::text IS NULL OR status = $1) \
             AND ($2::text IS NULL OR core_id = $2) AND ($3::uuid IS NULL OR id > $3) \
             ORDER BY id LIMIT $4",
        )
        .bind(filter.status.map(TaskStatus::as_str))
        .bind(filter.core_id.as_deref())
        .bind(filter.after.map(|id| id.0))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err(OP))?;
        tasks_from_rows(OP, &rows)
    }

    async fn claim_tasks(
        &self,
        core_id: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>> {
        const OP: &str = "claim_tasks";
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(CLAIM_TASKS)
            .bind(core_id)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(db_micros(lease))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err(OP))?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let (task, token) = task_from_row(OP, row)?;
            let lease_token = token.ok_or_else(|| corrupt(OP, "claimed task has no lease"))?;
            claimed.push(Claimed { task, lease_token });
        }
        if !claimed.is_empty() {
            self.wake_events();
        }
        Ok(claimed)
    }

    async fn next_run_at(&self, core_id: &str) -> Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar(
            "SELECT min(run_at) FROM orch_tasks WHERE status = 'queued' AND core_id = $1",
        )
        .bind(core_id)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err("next_run_at"))
    }

    async fn renew_leases(
        &self,
        leases: Vec<(TaskId, LeaseToken)>,
        lease: Duration,
    ) -> Result<Vec<Option<DateTime<Utc>>>> {
        const OP: &str = "renew_leases";
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = leases.iter().map(|(id, _)| id.0).collect();
        let tokens: Vec<Uuid> = leases.iter().map(|(_, token)| token.0).collect();
        let rows = sqlx::query(
            "UPDATE orch_tasks t SET lease_expires_at = now() + $3::int8 * interval '1 microsecond' \
             FROM unnest($1::uuid[], $2::uuid[]) AS u(id, token) \
             WHERE t.id = u.id AND t.lease_token = u.token AND t.status = 'running' \
             RETURNING t.id, t.lease_token, t.lease_expires_at",
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(db_micros(lease))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err(OP))?;
        let mut renewed: HashMap<(Uuid, Uuid), DateTime<Utc>> = HashMap::new();
        for row in &rows {
            let get = |e: sqlx::Error| corrupt(OP, e);
            renewed.insert(
                (
                    row.try_get("id").map_err(get)?,
                    row.try_get("lease_token").map_err(get)?,
                ),
                row.try_get("lease_expires_at").map_err(get)?,
            );
        }
        Ok(leases
            .iter()
            .map(|(id, token)| renewed.get(&(id.0, token.0)).copied())
            .collect())
    }

    async fn finish_attempt(
        &self,
        id: TaskId,
        token: LeaseToken,
        outcome: AttemptOutcome,
    ) -> Result<Task> {
        const OP: &str = "finish_attempt";
        let to = outcome.target_status();
        // (retry delay, undo, result, error, timeout message, kind, data has error, extra data)
        let (delay, undo, result, error, timed_out, kind, with_error, extra) = match outcome {
            AttemptOutcome::Succeeded { result } => (
                Duration::ZERO,
                0,
                Some(result.to_string()),
                None,
                false,
                EventKind::TaskSucceeded,
                false,
                json!({}),
            ),
            AttemptOutcome::Failed {
                error,
                retry_in: None,
            } => (
                Duration::ZERO,
                0,
                None,
                Some(storable(error)),
                false,
                EventKind::TaskFailed,
                true,
                json!({}),
            ),
            AttemptOutcome::TimedOut { retry_in: None } => (
                Duration::ZERO,
                0,
                None,
                None,
                true,
                EventKind::TaskTimedOut,
                true,
                json!({}),
            ),
            AttemptOutcome::Failed {
                error,
                retry_in: Some(retry_in),
            } => (
                retry_in,
                0,
                None,
                Some(storable(error)),
                false,
                EventKind::TaskRetrying,
                true,
                json!({"reason": "failed", "retry_in": retry_in.as_secs_f64()}),
            ),
            AttemptOutcome::TimedOut {
                retry_in: Some(retry_in),
            } => (
                retry_in,
                0,
                None,
                None,
                true,
                EventKind::TaskRetrying,
                true,
                json!({"reason": "timed_out", "retry_in": retry_in.as_secs_f64()}),
            ),
            AttemptOutcome::Abandoned => (
                Duration::ZERO,
                1,
                None,
                None,
                false,
                EventKind::TaskRequeued,
                false,
                json!({}),
            ),
        };
        let row = sqlx::query(FINISH_ATTEMPT)
            .bind(id.0)
            .bind(token.0)
            .bind(to.as_str())
            .bind(db_micros(delay))
            .bind(undo)
            .bind(result)
            .bind(error)
            .bind(timed_out)
            .bind(kind.as_str())
            .bind(with_error)
            .bind(extra.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err(OP))?;
        let Some(row) = row else {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orch_tasks WHERE id = $1)")
                    .bind(id.0)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_err(OP))?;
            return Err(if exists {
                Error::LeaseLost(id)
            } else {
                Error::TaskNotFound(id)
            });
        };
        if to == TaskStatus::Queued {
            self.wake_tasks();
        }
        self.wake_events();
        task_from_row(OP, &row).map(|(task, _)| task)
    }

    async fn cancel_task(&self, id: TaskId) -> Result<Task> {
        self.finish_task(
            "cancel_task",
            id,
            TaskStatus::Cancelled,
            None,
            None,
            json!({}),
        )
        .await
    }

    async fn resolve_task(&self, id: TaskId, resolution: Resolution) -> Result<Task> {
        let (to, result, error) = match resolution {
            Resolution::Succeeded(result) => (TaskStatus::Succeeded, Some(result), None),
            Resolution::Failed(error) => (TaskStatus::Failed, None, Some(storable(error))),
        };
        self.finish_task(
            "resolve_task",
            id,
            to,
            result,
            error,
            json!({"external": true}),
        )
        .await
    }

    async fn rescue_expired(&self, limit: usize) -> Result<Vec<Task>> {
        const OP: &str = "rescue_expired";
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(RESCUE_EXPIRED)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err(OP))?;
        let rescued = tasks_from_rows(OP, &rows)?;
        if !rescued.is_empty() {
            self.wake_tasks();
            self.wake_events();
        }
        Ok(rescued)
    }

    async fn prune_tasks(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let done = sqlx::query(
            "WITH picked AS (SELECT id FROM orch_tasks WHERE finished_at < $1 \
             AND status IN ('succeeded', 'failed', 'cancelled', 'timed_out') \
             ORDER BY finished_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             DELETE FROM orch_tasks USING picked WHERE orch_tasks.id = picked.id",
        )
        .bind(before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(db_err("prune_tasks"))?;
        Ok(done.rows_affected())
    }

    async fn queue_depth(&self) -> Result<Vec<(String, i32, u64)>> {
        const OP: &str = "queue_depth";
        let rows = sqlx::query(
            "SELECT core_id, priority, count(*) AS n FROM orch_tasks WHERE status = 'queued' \
             GROUP BY core_id, priority ORDER BY core_id, priority",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err(OP))?;
        rows.iter()
            .map(|row| {
                let get = |e: sqlx::Error| corrupt(OP, e);
                Ok((
                    row.try_get("core_id").map_err(get)?,
                    row.try_get("priority").map_err(get)?,
                    count(row.try_get("n").map_err(get)?),
                ))
            })
            .collect()
    }

    fn task_wakeups(&self) -> Option<ChangeSignal> {
        Some(self.task_wakeups.clone())
    }
}
