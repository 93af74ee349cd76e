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
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::statements::{
    CLAIM_TASKS, CREATE_CLAIMED, CREATE_TASK, CREATE_TASKS, FINISH_ATTEMPT, FINISH_ATTEMPTS,
    FINISH_SUCCESSES, FINISH_TASK, RESCUE_EXPIRED,
};
use super::{PostgresBackend, count, db_micros, task_from_row, tasks_from_rows};
use crate::common::{corrupt, db_err, from_micros, micros};

/// The parameters of [`FINISH_ATTEMPT`] (one row of [`FINISH_ATTEMPTS`]) for one outcome.
struct OutcomeParams {
    /// The state the task moves to.
    to: TaskStatus,
    /// Retry delay when requeued.
    delay: Duration,
    /// 1 when the attempt is given back (abandoned), else 0.
    undo: i32,
    /// The result as JSON text.
    result: Option<String>,
    /// The error message.
    error: Option<String>,
    /// Whether the error is the timeout message (built from the attempt number in SQL).
    timed_out: bool,
    /// The event to append.
    kind: EventKind,
    /// Whether the event data holds the error.
    with_error: bool,
    /// Extra event data fields.
    extra: Value,
}

impl OutcomeParams {
    fn new(outcome: AttemptOutcome) -> Self {
        let to = outcome.target_status();
        // (retry delay, undo, result, error, timeout message, kind, data has error, extra data)
        let (delay, undo, result, error, timed_out, kind, with_error, extra) = match outcome {
            AttemptOutcome::Succeeded { result } => (
                Duration::ZERO,
                0,
                Some(storable_json(result)),
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
        OutcomeParams {
            to,
            delay,
            undo,
            result,
            error,
            timed_out,
            kind,
            with_error,
            extra,
        }
    }
}

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

/// A result as JSON text PostgreSQL's `jsonb` accepts: it refuses the NUL character in strings
/// (and a refused statement would fail a whole batch of reports). NUL becomes U+FFFD, in keys
/// and values, as in error messages.
fn storable_json(value: Value) -> String {
    fn clean(value: Value) -> Value {
        match value {
            Value::String(s) => Value::String(storable(s)),
            Value::Array(items) => Value::Array(items.into_iter().map(clean).collect()),
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(key, value)| (storable(key), clean(value)))
                    .collect(),
            ),
            other => other,
        }
    }
    let text = value.to_string();
    // serde_json writes NUL as `\u0000`; anything else needs no cleaning.
    if text.contains("\\u0000") {
        clean(value).to_string()
    } else {
        text
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

/// [`CREATE_TASK`]: one task, scalar parameters.
async fn create_one(
    conn: &mut PgConnection,
    task: &NewTask,
    notify_payload: &str,
) -> Result<Vec<sqlx::postgres::PgRow>> {
    const OP: &str = "create_tasks";
    sqlx::query(CREATE_TASK)
        .bind(task.id.0)
        .bind(task.core_id.as_str())
        .bind(task.priority)
        .bind(micros(task.timeout))
        .bind(i32::try_from(task.max_attempts).unwrap_or(i32::MAX))
        .bind(task.not_before)
        .bind(db_micros(task.delay))
        .bind(task.payload.to_string())
        .bind(task.metadata.to_string())
        .bind(task.idempotency_key.as_deref())
        .bind(&task.locks)
        .bind(notify_payload)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(OP))
}

/// [`CREATE_TASKS`]: a batch, one array per column.
async fn create_batch(
    conn: &mut PgConnection,
    tasks: &[NewTask],
    notify_payload: &str,
) -> Result<Vec<sqlx::postgres::PgRow>> {
    const OP: &str = "create_tasks";
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
    for task in tasks {
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
    sqlx::query(CREATE_TASKS)
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
        .bind(notify_payload)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(OP))
}

/// Inserts `tasks` in order on `conn` (alone, or inside the caller's transaction), each with
/// its `task.queued` event, and sends `notify_payload` on the wake-up channel if any was
/// stored; a task whose idempotency key exists is returned instead, not stored. Also returns
/// whether any task was stored.
pub(super) async fn insert_tasks(
    conn: &mut PgConnection,
    tasks: Vec<NewTask>,
    notify_payload: String,
) -> Result<(Vec<Created>, bool)> {
    const OP: &str = "create_tasks";
    if tasks.is_empty() {
        return Ok((Vec::new(), false));
    }
    let rows = match tasks.as_slice() {
        [task] => create_one(conn, task, &notify_payload).await?,
        _ => create_batch(conn, &tasks, &notify_payload).await?,
    };
    // The database gave each inserted task its times; the rest is what was sent.
    let mut inserted: HashMap<Uuid, (DateTime<Utc>, DateTime<Utc>)> =
        HashMap::with_capacity(rows.len());
    for row in &rows {
        let get = |e: sqlx::Error| corrupt(OP, e);
        let id: Uuid = row.try_get("id").map_err(get)?;
        let run_at: DateTime<Utc> = row.try_get("run_at").map_err(get)?;
        let created_at: DateTime<Utc> = row.try_get("created_at").map_err(get)?;
        inserted.insert(id, (run_at, created_at));
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
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err(OP))?;
        for task in tasks_from_rows(OP, &rows)? {
            if let Some(key) = task.idempotency_key.clone() {
                existing.insert(key, task);
            }
        }
    }
    let mut out = Vec::with_capacity(tasks.len());
    for mut new in tasks {
        if let Some(&(run_at, created_at)) = inserted.get(&new.id.0) {
            // As stored: the timeout in whole microseconds.
            new.timeout = from_micros(micros(new.timeout));
            out.push(Created {
                task: new.into_queued(created_at, run_at),
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
    let stored = !inserted.is_empty();
    Ok((out, stored))
}

impl PostgresBackend {
    /// The notification of a statement ending attempts: always sent when it may requeue a
    /// task, rate-limited when it only appends events.
    fn finish_hint(&self, may_requeue: bool) -> Option<String> {
        if may_requeue {
            Some(self.notify_payload(true))
        } else {
            self.event_hint()
        }
    }

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
        let hint = self.event_hint();
        let row = sqlx::query(FINISH_TASK)
            .bind(id.0)
            .bind(to.as_str())
            .bind(result.map(|r| r.to_string()))
            .bind(error)
            .bind(terminal_event_kind(to).as_str())
            .bind(extra.to_string())
            .bind(&hint)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err(operation))?
            .ok_or(Error::TaskNotFound(id))?;
        self.deferred(&hint);
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
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.acquire().await.map_err(db_err("create_tasks"))?;
        let (out, stored) = insert_tasks(&mut conn, tasks, self.notify_payload(true)).await?;
        if stored {
            self.wake_tasks();
            self.wake_events();
        }
        Ok(out)
    }

    async fn create_claimed(
        &self,
        task: NewTask,
        lease: Duration,
    ) -> Result<std::result::Result<Claimed, NewTask>> {
        const OP: &str = "create_claimed";
        if task.idempotency_key.is_some() || !task.delay.is_zero() {
            return Ok(Err(task));
        }
        // A dispatch: committed durably, whatever the worker commits do.
        let hint = self.event_hint();
        let row = sqlx::query(CREATE_CLAIMED)
            .bind(task.id.0)
            .bind(task.core_id.as_str())
            .bind(task.priority)
            .bind(micros(task.timeout))
            .bind(i32::try_from(task.max_attempts).unwrap_or(i32::MAX))
            .bind(task.not_before)
            .bind(task.payload.to_string())
            .bind(task.metadata.to_string())
            .bind(&task.locks)
            .bind(db_micros(lease))
            .bind(&hint)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err(OP))?;
        self.deferred(&hint);
        let Some(row) = row else {
            return Ok(Err(task));
        };
        self.wake_events();
        let (task, token) = task_from_row(OP, &row)?;
        let lease_token = token.ok_or_else(|| corrupt(OP, "claimed task has no lease"))?;
        Ok(Ok(Claimed { task, lease_token }))
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
        let hint = self.event_hint();
        let rows = sqlx::query(CLAIM_TASKS)
            .bind(core_id)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(db_micros(lease))
            .bind(&hint)
            .fetch_all(&self.worker_pool)
            .await
            .map_err(db_err(OP))?;
        if !rows.is_empty() {
            self.deferred(&hint);
        }
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
        .fetch_all(&self.worker_pool)
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
        let p = OutcomeParams::new(outcome);
        let hint = self.finish_hint(p.to == TaskStatus::Queued);
        let row = sqlx::query(FINISH_ATTEMPT)
            .bind(id.0)
            .bind(token.0)
            .bind(p.to.as_str())
            .bind(db_micros(p.delay))
            .bind(p.undo)
            .bind(p.result)
            .bind(p.error)
            .bind(p.timed_out)
            .bind(p.kind.as_str())
            .bind(p.with_error)
            .bind(p.extra.to_string())
            .bind(&hint)
            .fetch_optional(&self.worker_pool)
            .await
            .map_err(db_err(OP))?;
        if row.is_some() {
            self.deferred(&hint);
        }
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
        if p.to == TaskStatus::Queued {
            self.wake_tasks();
        }
        self.wake_events();
        task_from_row(OP, &row).map(|(task, _)| task)
    }

    async fn finish_attempts(
        &self,
        reports: Vec<(TaskId, LeaseToken, AttemptOutcome)>,
    ) -> Result<Vec<Result<TaskStatus>>> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = std::collections::HashSet::with_capacity(reports.len());
        let simple = reports.iter().all(|(id, _, outcome)| {
            matches!(outcome, AttemptOutcome::Succeeded { .. }) && ids.insert(*id)
        });
        if simple {
            self.finish_successes(reports).await
        } else {
            self.finish_batch(reports).await
        }
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
            .bind(self.notify_payload(true))
            .fetch_all(&self.worker_pool)
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

impl PostgresBackend {
    /// [`TaskStore::finish_attempts`] in general: one [`FINISH_ATTEMPTS`] statement.
    async fn finish_batch(
        &self,
        reports: Vec<(TaskId, LeaseToken, AttemptOutcome)>,
    ) -> Result<Vec<Result<TaskStatus>>> {
        const OP: &str = "finish_attempts";
        let n = reports.len();
        let mut ids = Vec::with_capacity(n);
        let mut tokens = Vec::with_capacity(n);
        let mut targets = Vec::with_capacity(n);
        let mut delays = Vec::with_capacity(n);
        let mut undos = Vec::with_capacity(n);
        let mut results = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        let mut timeouts = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut with_errors = Vec::with_capacity(n);
        let mut extras = Vec::with_capacity(n);
        let mut any_requeue = false;
        for (id, token, outcome) in reports {
            let p = OutcomeParams::new(outcome);
            any_requeue |= p.to == TaskStatus::Queued;
            ids.push(id.0);
            tokens.push(token.0);
            targets.push(p.to.as_str());
            delays.push(db_micros(p.delay));
            undos.push(p.undo);
            results.push(p.result);
            errors.push(p.error);
            timeouts.push(p.timed_out);
            kinds.push(p.kind.as_str().to_owned());
            with_errors.push(p.with_error);
            extras.push(p.extra.to_string());
        }
        let hint = self.finish_hint(any_requeue);
        let rows = sqlx::query(FINISH_ATTEMPTS)
            .bind(&ids)
            .bind(&tokens)
            .bind(&targets)
            .bind(&delays)
            .bind(&undos)
            .bind(&results)
            .bind(&errors)
            .bind(&timeouts)
            .bind(&kinds)
            .bind(&with_errors)
            .bind(&extras)
            .bind(&hint)
            .fetch_all(&self.worker_pool)
            .await
            .map_err(db_err(OP))?;
        if rows.len() != n {
            return Err(Error::backend(
                OP,
                format!("{} results for {n} reports", rows.len()),
            ));
        }
        let (mut requeued, mut changed) = (false, false);
        let mut out = Vec::with_capacity(n);
        for (row, id) in rows.iter().zip(&ids) {
            let get = |e: sqlx::Error| corrupt(OP, e);
            let status: Option<String> = row.try_get("new_status").map_err(get)?;
            let found: bool = row.try_get("found").map_err(get)?;
            out.push(match status {
                Some(status) => {
                    let status: TaskStatus = status.parse().map_err(|e| corrupt(OP, e))?;
                    requeued |= status == TaskStatus::Queued;
                    changed = true;
                    Ok(status)
                }
                None if found => Err(Error::LeaseLost(TaskId(*id))),
                None => Err(Error::TaskNotFound(TaskId(*id))),
            });
        }
        if requeued {
            self.wake_tasks();
        }
        if changed {
            self.deferred(&hint);
            self.wake_events();
        }
        Ok(out)
    }

    /// [`TaskStore::finish_attempts`] for successes of distinct tasks: one [`FINISH_SUCCESSES`]
    /// statement; the reports it did not finish (lease lost, task unknown) then go through
    /// [`finish_batch`](Self::finish_batch), which tells which.
    async fn finish_successes(
        &self,
        reports: Vec<(TaskId, LeaseToken, AttemptOutcome)>,
    ) -> Result<Vec<Result<TaskStatus>>> {
        const OP: &str = "finish_attempts";
        let n = reports.len();
        let mut ids = Vec::with_capacity(n);
        let mut tokens = Vec::with_capacity(n);
        let mut results = Vec::with_capacity(n);
        for (id, token, outcome) in reports {
            ids.push(id.0);
            tokens.push(token.0);
            results.push(match outcome {
                AttemptOutcome::Succeeded { result } => storable_json(result),
                _ => Value::Null.to_string(),
            });
        }
        let hint = self.finish_hint(false);
        let rows = sqlx::query(FINISH_SUCCESSES)
            .bind(&ids)
            .bind(&tokens)
            .bind(&results)
            .bind(&hint)
            .fetch_all(&self.worker_pool)
            .await
            .map_err(db_err(OP))?;
        let mut done = std::collections::HashSet::with_capacity(rows.len());
        for row in &rows {
            let id: Uuid = row.try_get("id").map_err(|e| corrupt(OP, e))?;
            done.insert(id);
        }
        if !done.is_empty() {
            self.deferred(&hint);
            self.wake_events();
        }
        let mut out: Vec<Result<TaskStatus>> = Vec::with_capacity(n);
        let mut left = Vec::new();
        for (index, ((id, token), result)) in ids.into_iter().zip(tokens).zip(results).enumerate() {
            if done.contains(&id) {
                out.push(Ok(TaskStatus::Succeeded));
            } else {
                // Rare (a lost lease, an unknown task): the report again, for the general path.
                out.push(Err(Error::LeaseLost(TaskId(id))));
                let result = serde_json::from_str(&result).map_err(|e| corrupt(OP, e))?;
                left.push((
                    index,
                    (
                        TaskId(id),
                        LeaseToken(token),
                        AttemptOutcome::Succeeded { result },
                    ),
                ));
            }
        }
        if !left.is_empty() {
            let (indexes, reports): (Vec<usize>, Vec<_>) = left.into_iter().unzip();
            for (index, answer) in indexes.into_iter().zip(self.finish_batch(reports).await?) {
                out[index] = answer;
            }
        }
        Ok(out)
    }
}
