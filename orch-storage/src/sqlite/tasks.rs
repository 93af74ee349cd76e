//! The SQLite task queue: the in-memory backend's transitions, applied to rows inside one
//! `BEGIN IMMEDIATE` transaction together with their events.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use orch_core::{
    AttemptOutcome, ChangeSignal, Claimed, Created, Error, EventKind, LeaseToken, NewEvent,
    NewTask, Resolution, Result, Task, TaskFilter, TaskId, TaskStatus, TaskStore,
};
use serde_json::{Value, json};
use sqlx::{Row, SqliteConnection};

use uuid::Uuid;

use super::{
    SqliteBackend, json_to_db, now, task_from_row, task_json, tasks_from_json, time_from_db,
    time_to_db,
};
use crate::common::{corrupt, db_err, micros, truncate_micros};

/// `now + duration`, saturating at the latest representable time.
fn after(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| now.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn task_event(kind: EventKind, task: &Task, data: Value) -> NewEvent {
    NewEvent::for_task(kind, task.id, &task.core_id, data).with_attempt(task.attempt)
}

fn terminal_event_kind(status: TaskStatus) -> EventKind {
    match status {
        TaskStatus::Succeeded => EventKind::TaskSucceeded,
        TaskStatus::Failed => EventKind::TaskFailed,
        TaskStatus::TimedOut => EventKind::TaskTimedOut,
        _ => EventKind::TaskCancelled,
    }
}

/// Moves a task to a terminal state (checked), dropping any lease; returns the old state.
fn finish(
    task: &mut Task,
    lease: &mut Option<LeaseToken>,
    to: TaskStatus,
    now: DateTime<Utc>,
    result: Option<Value>,
    error: Option<String>,
) -> Result<TaskStatus> {
    let from = task.status;
    from.check(task.id, to)?;
    *lease = None;
    task.lease_expires_at = None;
    task.status = to;
    task.updated_at = now;
    task.finished_at = Some(now);
    if result.is_some() {
        task.result = result;
    }
    if error.is_some() {
        task.error = error;
    }
    Ok(from)
}

/// Puts a running task back in the queue to run at `run_at`; `undo_attempt` gives the attempt
/// back (the holder never ran it).
fn requeue(
    task: &mut Task,
    lease: &mut Option<LeaseToken>,
    now: DateTime<Utc>,
    run_at: DateTime<Utc>,
    error: Option<String>,
    undo_attempt: bool,
) {
    *lease = None;
    task.lease_expires_at = None;
    task.status = TaskStatus::Queued;
    task.run_at = run_at;
    task.updated_at = now;
    if undo_attempt {
        task.attempt = task.attempt.saturating_sub(1);
    }
    if error.is_some() {
        task.error = error;
    }
}

/// Ends the attempt held with `token` (the in-memory backend's rules): the new state is written
/// into `task`/`lease`; returns whether the task went back to the queue and the events to append.
fn end_attempt(
    task: &mut Task,
    lease: &mut Option<LeaseToken>,
    now: DateTime<Utc>,
    token: LeaseToken,
    outcome: AttemptOutcome,
) -> Result<(bool, Vec<NewEvent>)> {
    if *lease != Some(token) || task.status != TaskStatus::Running {
        return Err(Error::LeaseLost(task.id));
    }
    let attempt = task.attempt;
    Ok(match outcome {
        AttemptOutcome::Succeeded { result } => {
            finish(task, lease, TaskStatus::Succeeded, now, Some(result), None)?;
            let data = Value::Null;
            (
                false,
                vec![task_event(EventKind::TaskSucceeded, task, data)],
            )
        }
        AttemptOutcome::Failed {
            error,
            retry_in: None,
        } => {
            let data = json!({"error": error});
            finish(task, lease, TaskStatus::Failed, now, None, Some(error))?;
            (false, vec![task_event(EventKind::TaskFailed, task, data)])
        }
        AttemptOutcome::TimedOut { retry_in: None } => {
            let error = format!("attempt {attempt} timed out");
            let data = json!({"error": error});
            finish(task, lease, TaskStatus::TimedOut, now, None, Some(error))?;
            (false, vec![task_event(EventKind::TaskTimedOut, task, data)])
        }
        AttemptOutcome::Failed {
            error,
            retry_in: Some(retry_in),
        } => {
            let data = json!({"error": error, "reason": "failed",
                "retry_in": retry_in.as_secs_f64()});
            requeue(task, lease, now, after(now, retry_in), Some(error), false);
            (true, vec![task_event(EventKind::TaskRetrying, task, data)])
        }
        AttemptOutcome::TimedOut {
            retry_in: Some(retry_in),
        } => {
            let error = format!("attempt {attempt} timed out");
            let data = json!({"error": error,
                "reason": "timed_out", "retry_in": retry_in.as_secs_f64()});
            requeue(task, lease, now, after(now, retry_in), Some(error), false);
            (true, vec![task_event(EventKind::TaskRetrying, task, data)])
        }
        AttemptOutcome::Abandoned => {
            requeue(task, lease, now, now, None, true);
            (
                true,
                vec![task_event(EventKind::TaskRequeued, task, Value::Null)],
            )
        }
    })
}

/// The task and its lease, read inside the write transaction.
async fn load(
    conn: &mut SqliteConnection,
    operation: &'static str,
    id: TaskId,
) -> Result<(Task, Option<LeaseToken>)> {
    let row = sqlx::query("SELECT * FROM orch_tasks WHERE id = ?")
        .bind(id.0)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err(operation))?
        .ok_or(Error::TaskNotFound(id))?;
    task_from_row(operation, &row)
}

/// Writes back every column a transition may change.
async fn save(
    conn: &mut SqliteConnection,
    operation: &'static str,
    task: &Task,
    lease: Option<LeaseToken>,
) -> Result<()> {
    sqlx::query(
        "UPDATE orch_tasks SET status = ?, attempt = ?, run_at = ?, updated_at = ?, \
         started_at = ?, finished_at = ?, lease_token = ?, lease_expires_at = ?, result = ?, \
         error = ? WHERE id = ?",
    )
    .bind(task.status.as_str())
    .bind(i64::from(task.attempt))
    .bind(time_to_db(task.run_at))
    .bind(time_to_db(task.updated_at))
    .bind(task.started_at.map(time_to_db))
    .bind(task.finished_at.map(time_to_db))
    .bind(lease.map(|l| l.0))
    .bind(task.lease_expires_at.map(time_to_db))
    .bind(task.result.as_ref().map(json_to_db))
    .bind(task.error.as_deref())
    .bind(task.id.0)
    .execute(&mut *conn)
    .await
    .map_err(db_err(operation))?;
    Ok(())
}

/// Appends one event in the caller's transaction; returns its sequence number.
pub(super) async fn insert_event(
    conn: &mut SqliteConnection,
    operation: &'static str,
    event: &NewEvent,
    at: DateTime<Utc>,
) -> Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO orch_events (kind, at, task_id, core_id, attempt, data) \
         VALUES (?, ?, ?, ?, ?, ?) RETURNING seq",
    )
    .bind(event.kind.as_str())
    .bind(time_to_db(at))
    .bind(event.task_id.map(|id| id.0))
    .bind(event.core_id.as_deref())
    .bind(event.attempt.map(i64::from))
    .bind(json_to_db(&event.data))
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err(operation))
}

/// Inserts `tasks` in order on `conn` (inside the caller's write transaction), each with its
/// `task.queued` event; a task whose idempotency key exists is returned instead, not stored.
pub(super) async fn insert_tasks(
    conn: &mut SqliteConnection,
    tasks: Vec<NewTask>,
) -> Result<Vec<Created>> {
    const OP: &str = "create_tasks";
    let now = now();
    let mut events = Vec::with_capacity(tasks.len());
    let mut out = Vec::with_capacity(tasks.len());
    // Without idempotency keys nothing needs looking up: rows go in several per statement.
    let keyed = tasks.iter().any(|t| t.idempotency_key.is_some());
    let mut pending = Vec::new();
    for new in tasks {
        if let Some(key) = &new.idempotency_key {
            let existing = sqlx::query("SELECT * FROM orch_tasks WHERE idempotency_key = ?")
                .bind(key)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_err(OP))?;
            if let Some(row) = existing {
                let (task, _) = task_from_row(OP, &row)?;
                out.push(Created {
                    task,
                    created: false,
                });
                continue;
            }
        }
        let mut run_at = after(now, new.delay);
        if let Some(not_before) = new.not_before {
            run_at = run_at.max(truncate_micros(not_before));
        }
        let task = new.into_queued(now, run_at);
        if keyed {
            // Stored now, so a later task of the batch with the same key finds it.
            insert_rows(conn, std::slice::from_ref(&task)).await?;
        } else {
            pending.push(task.clone());
        }
        events.push(task_event(EventKind::TaskQueued, &task, Value::Null));
        out.push(Created {
            task,
            created: true,
        });
    }
    insert_rows(conn, &pending).await?;
    insert_events(conn, OP, &events, now).await?;
    Ok(out)
}

/// Most tasks per multi-row insert (12 parameters each, under SQLite's 32,766).
const TASKS_PER_INSERT: usize = 500;

/// Inserts new `queued` task rows, several per statement.
async fn insert_rows(conn: &mut SqliteConnection, tasks: &[Task]) -> Result<()> {
    const OP: &str = "create_tasks";
    for chunk in tasks.chunks(TASKS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, \
             attempt, run_at, created_at, updated_at, payload, metadata, idempotency_key, \
             locks) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str("(?, ?, 'queued', ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)");
        }
        // Built only from the fixed fragments above: nothing from the caller is spliced in.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for task in chunk {
            query = query
                .bind(task.id.0)
                .bind(task.core_id.clone())
                .bind(task.priority)
                .bind(micros(task.timeout))
                .bind(i64::from(task.max_attempts))
                .bind(time_to_db(task.run_at))
                .bind(time_to_db(task.created_at))
                .bind(time_to_db(task.updated_at))
                .bind(json_to_db(&task.payload))
                .bind(json_to_db(&task.metadata))
                .bind(task.idempotency_key.clone())
                .bind(serde_json::to_string(&task.locks)?);
        }
        query.execute(&mut *conn).await.map_err(db_err(OP))?;
    }
    Ok(())
}

/// Claims up to `?4` available tasks of core `?3` at time `?1` with lease expiry `?2`, gives
/// each a lease token starting with the batch's bytes `?5`, appends their `task.started`
/// events and returns them as one JSON array, all in claim order.
const CLAIM_SCRIPT: &str = concat!(
    "BEGIN IMMEDIATE;
UPDATE orch_tasks SET status = 'running', attempt = attempt + 1, started_at = ?1,
    updated_at = ?1, lease_token = unhex(hex(?5) || hex(randomblob(8))), lease_expires_at = ?2
WHERE id IN (SELECT id FROM orch_tasks WHERE status = 'queued' AND core_id = ?3
             AND run_at <= ?1 ORDER BY priority DESC, run_at, id LIMIT ?4);
INSERT INTO orch_events (kind, at, task_id, core_id, attempt, data)
SELECT 'task.started', ?1, id, core_id, attempt, 'null' FROM orch_tasks
WHERE lease_expires_at = ?2 AND substr(lease_token, 1, 8) = ?5
ORDER BY priority DESC, run_at, id;
SELECT json_group_array(",
    task_json!(),
    " ORDER BY priority DESC, run_at, id) AS tasks FROM orch_tasks
WHERE lease_expires_at = ?2 AND substr(lease_token, 1, 8) = ?5;
COMMIT"
);

/// Finishes, as successes, the reports `?1` (a JSON array of `[hex id, hex lease token,
/// result]`, distinct tasks) that hold their task's lease, at time `?2`, with their
/// `task.succeeded` events in input order; returns the positions of the reports it finished
/// as one JSON array.
const FINISH_SUCCESSES_SCRIPT: &str = "BEGIN IMMEDIATE;
SELECT json_group_array(v.key) AS finished
FROM json_each(?1) AS v JOIN orch_tasks t ON t.id = unhex(v.value ->> 0)
WHERE t.status = 'running' AND t.lease_token = unhex(v.value ->> 1);
INSERT INTO orch_events (kind, at, task_id, core_id, attempt, data)
SELECT 'task.succeeded', ?2, t.id, t.core_id, t.attempt, 'null'
FROM json_each(?1) AS v JOIN orch_tasks t ON t.id = unhex(v.value ->> 0)
WHERE t.status = 'running' AND t.lease_token = unhex(v.value ->> 1)
ORDER BY v.key;
UPDATE orch_tasks SET status = 'succeeded', updated_at = ?2, finished_at = ?2,
    result = v.value -> 2, lease_token = NULL, lease_expires_at = NULL
FROM json_each(?1) AS v
WHERE orch_tasks.id = unhex(v.value ->> 0) AND orch_tasks.lease_token = unhex(v.value ->> 1)
    AND orch_tasks.status = 'running';
COMMIT";

/// Most events per multi-row insert (6 parameters each, under SQLite's 32,766).
const EVENTS_PER_INSERT: usize = 500;

/// Most successes finished by one statement.
const SUCCESSES_PER_STATEMENT: usize = 128;

/// Finishes, in one statement, the successes of `chunk` whose task is running under the given
/// lease; returns those tasks' core and attempt. The rows are padded to a power of two (by
/// repeating the last one, which changes nothing) so that few statement shapes are prepared.
async fn finish_successes(
    conn: &mut SqliteConnection,
    chunk: &[(usize, TaskId, LeaseToken, Value)],
    now: DateTime<Utc>,
) -> Result<std::collections::HashMap<TaskId, (String, u32)>> {
    const OP: &str = "finish_attempts";
    let Some(last) = chunk.last() else {
        return Ok(std::collections::HashMap::new());
    };
    let rows = chunk.len().next_power_of_two();
    let mut sql = String::from("WITH v(id, token, result) AS (VALUES ");
    for i in 0..rows {
        sql.push_str(if i == 0 { "(?, ?, ?)" } else { ", (?, ?, ?)" });
    }
    sql.push_str(
        ") UPDATE orch_tasks SET status = 'succeeded', updated_at = ?, finished_at = ?, \
         result = v.result, lease_token = NULL, lease_expires_at = NULL \
         FROM v WHERE orch_tasks.id = v.id AND orch_tasks.lease_token = v.token \
         AND orch_tasks.status = 'running' \
         RETURNING orch_tasks.id, orch_tasks.core_id, orch_tasks.attempt",
    );
    // Built only from the fixed fragments above: nothing from the caller is spliced in.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (_, id, token, result) in chunk
        .iter()
        .chain(std::iter::repeat_n(last, rows - chunk.len()))
    {
        query = query.bind(id.0).bind(token.0).bind(json_to_db(result));
    }
    let at = time_to_db(now);
    let found = query
        .bind(at)
        .bind(at)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(OP))?;
    let mut done = std::collections::HashMap::with_capacity(found.len());
    for row in &found {
        let get = |e: sqlx::Error| corrupt(OP, e);
        let id: uuid::Uuid = row.try_get("id").map_err(get)?;
        let core_id: String = row.try_get("core_id").map_err(get)?;
        let attempt: i64 = row.try_get("attempt").map_err(get)?;
        let attempt = u32::try_from(attempt).map_err(|_| corrupt(OP, "attempt out of range"))?;
        done.insert(TaskId(id), (core_id, attempt));
    }
    Ok(done)
}

/// Appends events in order in the caller's transaction, several rows per statement.
pub(super) async fn insert_events(
    conn: &mut SqliteConnection,
    operation: &'static str,
    events: &[NewEvent],
    at: DateTime<Utc>,
) -> Result<()> {
    for chunk in events.chunks(EVENTS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO orch_events (kind, at, task_id, core_id, attempt, data) VALUES ",
        );
        for i in 0..chunk.len() {
            sql.push_str(if i == 0 {
                "(?, ?, ?, ?, ?, ?)"
            } else {
                ", (?, ?, ?, ?, ?, ?)"
            });
        }
        // Built only from the fixed fragments above: nothing from the caller is spliced in.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for event in chunk {
            query = query
                .bind(event.kind.as_str().to_owned())
                .bind(time_to_db(at))
                .bind(event.task_id.map(|id| id.0))
                .bind(event.core_id.clone())
                .bind(event.attempt.map(i64::from))
                .bind(json_to_db(&event.data));
        }
        query.execute(&mut *conn).await.map_err(db_err(operation))?;
    }
    Ok(())
}

impl SqliteBackend {
    /// [`TaskStore::finish_attempts`] for any batch, in one transaction.
    async fn finish_attempts_general(
        &self,
        reports: Vec<(TaskId, LeaseToken, AttemptOutcome)>,
    ) -> Result<Vec<Result<TaskStatus>>> {
        const OP: &str = "finish_attempts";
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let now = now();
        let count = reports.len();
        // The common case first, in one statement per chunk: successes, each the first report
        // of its task in the batch. The rest (and any success that did not hold its lease)
        // then go through the general path one by one, in input order, as `finish_attempt`
        // calls in turn would.
        let mut firsts = std::collections::HashSet::with_capacity(count);
        let mut successes = Vec::new();
        let mut rest = Vec::new();
        for (index, (id, token, outcome)) in reports.into_iter().enumerate() {
            let first = firsts.insert(id);
            match outcome {
                AttemptOutcome::Succeeded { result } if first => {
                    successes.push((index, id, token, result));
                }
                other => rest.push((index, id, token, other)),
            }
        }
        let mut out: Vec<Option<Result<TaskStatus>>> = (0..count).map(|_| None).collect();
        let mut events = Vec::with_capacity(count);
        let mut tx = self.begin(OP).await?;
        for chunk in successes.chunks(SUCCESSES_PER_STATEMENT) {
            let done = finish_successes(&mut tx, chunk, now).await?;
            for (index, id, token, result) in chunk {
                match done.get(id) {
                    Some((core_id, attempt)) => {
                        let event =
                            NewEvent::for_task(EventKind::TaskSucceeded, *id, core_id, Value::Null)
                                .with_attempt(*attempt);
                        events.push((*index, event));
                        out[*index] = Some(Ok(TaskStatus::Succeeded));
                    }
                    None => rest.push((
                        *index,
                        *id,
                        *token,
                        AttemptOutcome::Succeeded {
                            result: result.clone(),
                        },
                    )),
                }
            }
        }
        rest.sort_by_key(|(index, ..)| *index);
        let mut requeued = false;
        for (index, id, token, outcome) in rest {
            // A missing task or a lost lease fails only its own item, as `finish_attempt`
            // would; a database error fails the batch (and rolls all of it back).
            let (mut task, mut lease) = match load(&mut tx, OP, id).await {
                Ok(loaded) => loaded,
                Err(error @ Error::TaskNotFound(_)) => {
                    out[index] = Some(Err(error));
                    continue;
                }
                Err(error) => return Err(error),
            };
            let (back, task_events) = match end_attempt(&mut task, &mut lease, now, token, outcome)
            {
                Ok(applied) => applied,
                Err(error) => {
                    out[index] = Some(Err(error));
                    continue;
                }
            };
            save(&mut tx, OP, &task, lease).await?;
            events.extend(task_events.into_iter().map(|event| (index, event)));
            requeued |= back;
            out[index] = Some(Ok(task.status));
        }
        // In input order (stable: one item's own events keep theirs).
        events.sort_by_key(|(index, _)| *index);
        let events: Vec<NewEvent> = events.into_iter().map(|(_, event)| event).collect();
        insert_events(&mut tx, OP, &events, now).await?;
        tx.commit().await.map_err(db_err(OP))?;
        if !events.is_empty() {
            self.wake_events();
        }
        if requeued {
            self.wake_tasks();
        }
        out.into_iter()
            .map(|item| item.ok_or_else(|| corrupt(OP, "a report got no answer")))
            .collect()
    }

    /// One finishing transition on a task, with its events, in one write transaction.
    async fn transition<T>(
        &self,
        operation: &'static str,
        id: TaskId,
        apply: impl FnOnce(
            &mut Task,
            &mut Option<LeaseToken>,
            DateTime<Utc>,
        ) -> Result<(T, Vec<NewEvent>)>,
    ) -> Result<(Task, T)> {
        let now = now();
        let mut tx = self.begin(operation).await?;
        let (mut task, mut lease) = load(&mut tx, operation, id).await?;
        let (out, events) = apply(&mut task, &mut lease, now)?;
        save(&mut tx, operation, &task, lease).await?;
        insert_events(&mut tx, operation, &events, now).await?;
        tx.commit().await.map_err(db_err(operation))?;
        self.wake_events();
        Ok((task, out))
    }
}

#[async_trait]
impl TaskStore for SqliteBackend {
    async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<Created>> {
        const OP: &str = "create_tasks";
        let mut tx = self.begin(OP).await?;
        let out = insert_tasks(&mut tx, tasks).await?;
        tx.commit().await.map_err(db_err(OP))?;
        if out.iter().any(|c| c.created) {
            self.wake_tasks();
            self.wake_events();
        }
        Ok(out)
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
        const OP: &str = "get_task";
        let row = sqlx::query("SELECT * FROM orch_tasks WHERE id = ?")
            .bind(id.0)
            .fetch_optional(&self.readers)
            .await
            .map_err(db_err(OP))?;
        row.map(|row| task_from_row(OP, &row).map(|(task, _)| task))
            .transpose()
    }

    async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<Task>> {
        const OP: &str = "list_tasks";
        let limit = i64::try_from(filter.effective_limit()).unwrap_or(1000);
        let rows = sqlx::query(
            "SELECT * FROM orch_tasks WHERE (?1 IS NULL OR status = ?1) \
             AND (?2 IS NULL OR core_id = ?2) AND (?3 IS NULL OR id > ?3) ORDER BY id LIMIT ?4",
        )
        .bind(filter.status.map(TaskStatus::as_str))
        .bind(filter.core_id.as_deref())
        .bind(filter.after.map(|id| id.0))
        .bind(limit)
        .fetch_all(&self.readers)
        .await
        .map_err(db_err(OP))?;
        rows.iter()
            .map(|row| task_from_row(OP, row).map(|(task, _)| task))
            .collect()
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
        let now = now();
        let expires = after(now, lease);
        // Eight random bytes shared by this batch's lease tokens (each ends in eight of its
        // own): with the lease expiry, they find the batch again in the script's later
        // statements, through the lease index.
        let batch = Uuid::new_v4().as_bytes()[8..].to_vec();
        let rows = self
            .write_script(
                OP,
                sqlx::query(CLAIM_SCRIPT)
                    .bind(time_to_db(now))
                    .bind(time_to_db(expires))
                    .bind(core_id.to_owned())
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .bind(batch),
            )
            .await?;
        let [row] = rows.as_slice() else {
            return Err(corrupt(OP, "the claim returned no batch"));
        };
        let tasks: String = row.try_get("tasks").map_err(|e| corrupt(OP, e))?;
        let claimed = tasks_from_json(OP, &tasks)?
            .into_iter()
            .map(|(task, token)| {
                let lease_token = token.ok_or_else(|| corrupt(OP, "claimed task has no lease"))?;
                Ok(Claimed { task, lease_token })
            })
            .collect::<Result<Vec<_>>>()?;
        if !claimed.is_empty() {
            self.wake_events();
        }
        Ok(claimed)
    }

    async fn next_run_at(&self, core_id: &str) -> Result<Option<DateTime<Utc>>> {
        const OP: &str = "next_run_at";
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT min(run_at) FROM orch_tasks WHERE status = 'queued' AND core_id = ?",
        )
        .bind(core_id)
        .fetch_one(&self.readers)
        .await
        .map_err(db_err(OP))?;
        at.map(|at| time_from_db(OP, at)).transpose()
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
        let expires = after(now(), lease);
        let mut tx = self.begin(OP).await?;
        let mut out = Vec::with_capacity(leases.len());
        for (id, token) in leases {
            let done = sqlx::query(
                "UPDATE orch_tasks SET lease_expires_at = ? \
                 WHERE id = ? AND lease_token = ? AND status = 'running'",
            )
            .bind(time_to_db(expires))
            .bind(id.0)
            .bind(token.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
            out.push((done.rows_affected() > 0).then_some(expires));
        }
        tx.commit().await.map_err(db_err(OP))?;
        Ok(out)
    }

    async fn finish_attempt(
        &self,
        id: TaskId,
        token: LeaseToken,
        outcome: AttemptOutcome,
    ) -> Result<Task> {
        let (task, requeued) = self
            .transition("finish_attempt", id, |task, lease, now| {
                end_attempt(task, lease, now, token, outcome)
            })
            .await?;
        if requeued {
            self.wake_tasks();
        }
        Ok(task)
    }

    async fn finish_attempts(
        &self,
        reports: Vec<(TaskId, LeaseToken, AttemptOutcome)>,
    ) -> Result<Vec<Result<TaskStatus>>> {
        const OP: &str = "finish_attempts";
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        // The common case, a batch of successes of distinct tasks, is one write script; a
        // success that did not hold its lease then takes the general path, which tells why.
        let mut ids = std::collections::HashSet::with_capacity(reports.len());
        let all_successes = reports.iter().all(|(id, _, outcome)| {
            matches!(outcome, AttemptOutcome::Succeeded { .. }) && ids.insert(*id)
        });
        if !all_successes {
            return self.finish_attempts_general(reports).await;
        }
        let mut input = String::with_capacity(reports.len() * 96);
        input.push('[');
        for (i, (id, token, outcome)) in reports.iter().enumerate() {
            let AttemptOutcome::Succeeded { result } = outcome else {
                unreachable!("checked above");
            };
            if i > 0 {
                input.push(',');
            }
            input.push_str(&format!(
                "[\"{}\",\"{}\",{}]",
                id.0.simple(),
                token.0.simple(),
                json_to_db(result)
            ));
        }
        input.push(']');
        let rows = self
            .write_script(
                OP,
                sqlx::query(FINISH_SUCCESSES_SCRIPT)
                    .bind(input)
                    .bind(time_to_db(now())),
            )
            .await?;
        let [row] = rows.as_slice() else {
            return Err(corrupt(OP, "finishing returned no answer"));
        };
        let finished: String = row.try_get("finished").map_err(|e| corrupt(OP, e))?;
        let finished: Vec<usize> = serde_json::from_str(&finished).map_err(|e| corrupt(OP, e))?;
        let mut out: Vec<Option<Result<TaskStatus>>> = (0..reports.len()).map(|_| None).collect();
        for index in finished {
            let slot = out
                .get_mut(index)
                .ok_or_else(|| corrupt(OP, "finished a report that was not sent"))?;
            *slot = Some(Ok(TaskStatus::Succeeded));
        }
        if out.iter().any(Option::is_some) {
            self.wake_events();
        }
        let (rest_at, rest): (Vec<usize>, Vec<_>) = reports
            .into_iter()
            .enumerate()
            .filter(|(index, _)| out[*index].is_none())
            .unzip();
        if !rest.is_empty() {
            for (index, answer) in rest_at
                .into_iter()
                .zip(self.finish_attempts_general(rest).await?)
            {
                out[index] = Some(answer);
            }
        }
        out.into_iter()
            .map(|item| item.ok_or_else(|| corrupt(OP, "a report got no answer")))
            .collect()
    }

    async fn cancel_task(&self, id: TaskId) -> Result<Task> {
        let (task, ()) = self
            .transition("cancel_task", id, |task, lease, now| {
                let from = finish(task, lease, TaskStatus::Cancelled, now, None, None)?;
                let data = json!({"from": from});
                Ok(((), vec![task_event(EventKind::TaskCancelled, task, data)]))
            })
            .await?;
        Ok(task)
    }

    async fn resolve_task(&self, id: TaskId, resolution: Resolution) -> Result<Task> {
        let (task, ()) = self
            .transition("resolve_task", id, |task, lease, now| {
                let (to, result, error) = match resolution {
                    Resolution::Succeeded(result) => (TaskStatus::Succeeded, Some(result), None),
                    Resolution::Failed(error) => (TaskStatus::Failed, None, Some(error)),
                };
                let from = finish(task, lease, to, now, result, error)?;
                let data = json!({"from": from, "external": true});
                Ok(((), vec![task_event(terminal_event_kind(to), task, data)]))
            })
            .await?;
        Ok(task)
    }

    async fn rescue_expired(&self, limit: usize) -> Result<Vec<Task>> {
        const OP: &str = "rescue_expired";
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = now();
        let mut tx = self.begin(OP).await?;
        let rows = sqlx::query(
            "SELECT * FROM orch_tasks WHERE status = 'running' AND lease_expires_at <= ? \
             ORDER BY lease_expires_at, id LIMIT ?",
        )
        .bind(time_to_db(now))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err(OP))?;
        let mut rescued = Vec::with_capacity(rows.len());
        for row in &rows {
            let (mut task, mut lease) = task_from_row(OP, row)?;
            let attempt = task.attempt;
            let mut events = Vec::with_capacity(2);
            if task.has_attempts_left() {
                let error = format!("lease expired during attempt {attempt}");
                requeue(&mut task, &mut lease, now, now, Some(error), false);
                let data = json!({"will_retry": true});
                events.push(task_event(EventKind::TaskRescued, &task, data));
            } else {
                let error = format!("lease expired during final attempt {attempt}");
                let failed = json!({"error": error});
                finish(
                    &mut task,
                    &mut lease,
                    TaskStatus::Failed,
                    now,
                    None,
                    Some(error),
                )?;
                let data = json!({"will_retry": false});
                events.push(task_event(EventKind::TaskRescued, &task, data));
                events.push(task_event(EventKind::TaskFailed, &task, failed));
            }
            save(&mut tx, OP, &task, lease).await?;
            insert_events(&mut tx, OP, &events, now).await?;
            rescued.push(task);
        }
        tx.commit().await.map_err(db_err(OP))?;
        if !rescued.is_empty() {
            self.wake_tasks();
            self.wake_events();
        }
        Ok(rescued)
    }

    async fn prune_tasks(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        const OP: &str = "prune_tasks";
        if limit == 0 {
            return Ok(0);
        }
        let mut tx = self.begin(OP).await?;
        let done = sqlx::query(
            "DELETE FROM orch_tasks WHERE id IN (SELECT id FROM orch_tasks \
             WHERE finished_at IS NOT NULL AND finished_at < ? \
             AND status IN ('succeeded', 'failed', 'cancelled', 'timed_out') \
             ORDER BY finished_at, id LIMIT ?)",
        )
        .bind(time_to_db(before))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(db_err(OP))?;
        tx.commit().await.map_err(db_err(OP))?;
        Ok(done.rows_affected())
    }

    async fn queue_depth(&self) -> Result<Vec<(String, i32, u64)>> {
        const OP: &str = "queue_depth";
        let rows = sqlx::query(
            "SELECT core_id, priority, count(*) AS n FROM orch_tasks WHERE status = 'queued' \
             GROUP BY core_id, priority ORDER BY core_id, priority",
        )
        .fetch_all(&self.readers)
        .await
        .map_err(db_err(OP))?;
        rows.iter()
            .map(|row| {
                let n: i64 = row.try_get("n").map_err(|e| corrupt(OP, e))?;
                Ok((
                    row.try_get("core_id").map_err(|e| corrupt(OP, e))?,
                    row.try_get("priority").map_err(|e| corrupt(OP, e))?,
                    u64::try_from(n).unwrap_or(0),
                ))
            })
            .collect()
    }

    fn task_wakeups(&self) -> Option<ChangeSignal> {
        Some(self.task_wakeups.clone())
    }
}
