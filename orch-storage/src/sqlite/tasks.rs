//! The SQLite task queue. Every change is one of orch-core's [`rules`]: the general path
//! loads the task inside one `BEGIN IMMEDIATE` transaction, applies the rule's
//! [`Change`](rules::Change) and writes the row back with its events; the claim and a batch of
//! successes are write scripts whose state and event names come from the rules
//! ([`rule_sql`](crate::rule_sql)).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orch_core::backend::{
    AttemptOutcome, AttemptReport, ChangeSignal, Claimed, HeldLease, NewTask, QueueDepth,
    TaskStore, rules,
};
use orch_core::backend::{CreatedWorkflow, NewWorkflow};
use orch_core::{
    Created, EngineCounts, Error, LeaseToken, NewEvent, ParentTask, Resolution, Result, Task,
    TaskFilter, TaskId, TaskStatus, WorkflowId, WorkflowInfo, WorkflowTask,
};
use serde_json::Value;
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use super::{
    SqliteBackend, json_to_db, now, task_from_row, task_json, tasks_from_json, time_from_db,
    time_to_db,
};
use crate::common::{corrupt, db_err, micros, truncate_micros};
use crate::rule_sql::{Rendered, render};

/// The task and its lease, read inside the write transaction.
pub(super) async fn load(
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
pub(super) async fn save(
    conn: &mut SqliteConnection,
    operation: &'static str,
    task: &Task,
    lease: Option<LeaseToken>,
) -> Result<()> {
    sqlx::query(
        "UPDATE orch_tasks SET status = ?, attempt = ?, run_at = ?, updated_at = ?, \
         started_at = ?, finished_at = ?, lease_token = ?, lease_expires_at = ?, result = ?, \
         error = ?, waiting_for = ? WHERE id = ?",
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
    .bind(i64::from(task.waiting_for))
    .bind(task.id.0)
    .execute(&mut *conn)
    .await
    .map_err(db_err(operation))?;
    Ok(())
}

/// Applies one change decided by the rules to a loaded task: the new state into `task` and
/// `lease` (a change into `running` grants a fresh token), the events into `events`.
pub(super) fn apply(
    change: rules::Change,
    task: &mut Task,
    lease: &mut Option<LeaseToken>,
    now: DateTime<Utc>,
    events: &mut Vec<NewEvent>,
) -> Result<TaskStatus> {
    change.apply_with(task, now, |event| events.push(event))?;
    // The backend keeps microseconds: what it returns is what it stored.
    task.run_at = truncate_micros(task.run_at);
    task.lease_expires_at = task.lease_expires_at.map(truncate_micros);
    *lease = (task.status == TaskStatus::Running).then(LeaseToken::new);
    Ok(task.status)
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
    .bind(event.engine.as_deref())
    .bind(event.attempt.map(i64::from))
    .bind(json_to_db(&event.data))
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err(operation))
}

/// Inserts `tasks` in order on `conn` (inside the caller's write transaction), each as
/// [`rules::create`] makes it, with its event; a task whose idempotency key exists is returned
/// instead, not stored.
pub(super) async fn insert_tasks(
    conn: &mut SqliteConnection,
    tasks: Vec<NewTask>,
) -> Result<Vec<Created>> {
    const OP: &str = "create_tasks";
    let now = now();
    if tasks.iter().any(|task| !task.dependencies.is_empty()) {
        let graph = super::graph::insert_graph(conn, tasks, None, now).await?;
        insert_events(conn, OP, &graph.events, now).await?;
        return Ok(graph.created);
    }
    let mut out = Vec::with_capacity(tasks.len());
    // The rowid before the first row stored: the rows after it are this call's, in the order
    // they were stored, and their events are made from them in one statement.
    let mut before = None;
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
        let run_at = truncate_micros(rules::first_run_at(&new, now));
        let (task, _) = rules::create(new, now, run_at);
        if !keyed {
            // No task of the batch has a key, so none was found: every one is stored, below.
            pending.push(task);
            continue;
        }
        // Stored now, so a later task of the batch with the same key finds it.
        let stored = insert_rows(conn, std::slice::from_ref(&task)).await?;
        before = before.or(stored);
        out.push(Created {
            task,
            created: true,
        });
    }
    let stored = insert_rows(conn, &pending).await?;
    out.extend(pending.into_iter().map(|task| Created {
        task,
        created: true,
    }));
    if let Some(before) = before.or(stored) {
        let created = out.iter().filter(|c| c.created).count() as i64;
        let logged = sqlx::query(CREATED_EVENTS.sql())
            .bind(time_to_db(now))
            .bind(before)
            .bind(before.saturating_add(created))
            .execute(&mut *conn)
            .await
            .map_err(db_err(OP))?;
        if logged.rows_affected() as i64 != created {
            // The rows did not get consecutive rowids (a file whose largest rowid is taken):
            // fail rather than log other tasks' events (`create_tasks` then rolls back).
            return Err(Error::backend(
                OP,
                "the new tasks did not get consecutive rowids (the table's largest rowid is \
                 taken), so their events cannot be logged",
            ));
        }
    }
    Ok(out)
}

/// The event [`rules::create`] makes (`data` null: [`rule_sql`](crate::rule_sql) checks it)
/// for each task stored in rowids `?2` (excluded) to `?3`, at time `?1`, in the order the
/// tasks were stored.
static CREATED_EVENTS: Rendered = Rendered::new(
    "INSERT INTO orch_events (kind, at, task_id, core_id, attempt, data) \
     SELECT {created.event}, ?1, id, core_id, attempt, 'null' FROM orch_tasks \
     WHERE rowid > ?2 AND rowid <= ?3 ORDER BY rowid",
);

/// Most tasks per multi-row insert (14 parameters each, under SQLite's 32,766).
const TASKS_PER_INSERT: usize = 500;

/// Inserts new task rows in [`rules::CREATED`]'s state, several per statement; returns the
/// rowid just before the first one (none when `tasks` is empty).
///
/// The rows get consecutive rowids, each greater than any before it: SQLite gives a row
/// without an explicit rowid the largest rowid in the table plus one (it picks at random only
/// once the largest integer is taken), and the caller's write transaction keeps every other
/// writer out.
async fn insert_rows(conn: &mut SqliteConnection, tasks: &[Task]) -> Result<Option<i64>> {
    const OP: &str = "create_tasks";
    let mut before = None;
    for chunk in tasks.chunks(TASKS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, \
             attempt, run_at, created_at, updated_at, payload, metadata, idempotency_key, \
             locks, traceparent, tracestate) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str("(?, ?, {created}, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
        }
        // Built only from the fixed fragments above: nothing from the caller is spliced in.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(render(&sql)));
        for task in chunk {
            query = query
                .bind(task.id.0)
                .bind(task.engine.clone())
                .bind(task.priority)
                .bind(micros(task.timeout))
                .bind(i64::from(task.max_attempts))
                .bind(time_to_db(task.run_at))
                .bind(time_to_db(task.created_at))
                .bind(time_to_db(task.updated_at))
                .bind(json_to_db(&task.payload))
                .bind(json_to_db(&task.metadata))
                .bind(task.idempotency_key.clone())
                .bind(serde_json::to_string(&task.locks)?)
                .bind(task.traceparent.clone())
                .bind(task.tracestate.clone());
        }
        let done = query.execute(&mut *conn).await.map_err(db_err(OP))?;
        // At most TASKS_PER_INSERT rows.
        let rows = done.rows_affected() as i64;
        before = before.or(Some(done.last_insert_rowid() - rows));
    }
    Ok(before)
}

/// [`rules::claim`] as one write script: claims up to `?4` due tasks of engine `?3` of
/// priority above `?6` at time `?1` with lease expiry `?2`, gives each a lease token starting
/// with the batch's bytes `?5`, appends their events and returns them as one JSON array, all
/// in claim order.
static CLAIM_SCRIPT: Rendered = Rendered::new(concat!(
    "BEGIN IMMEDIATE;
UPDATE orch_tasks SET status = {claim.to}, attempt = attempt + 1, started_at = ?1,
    updated_at = ?1, lease_token = unhex(hex(?5) || hex(randomblob(8))), lease_expires_at = ?2
WHERE id IN (SELECT id FROM orch_tasks WHERE status = {claim.from} AND core_id = ?3
             AND run_at <= ?1 AND priority > ?6 ORDER BY priority DESC, run_at, id LIMIT ?4);
INSERT INTO orch_events (kind, at, task_id, core_id, attempt, data)
SELECT {claim.event}, ?1, id, core_id, attempt, 'null' FROM orch_tasks
WHERE lease_expires_at = ?2 AND substr(lease_token, 1, 8) = ?5
ORDER BY priority DESC, run_at, id;
SELECT json_group_array(",
    task_json!(),
    " ORDER BY priority DESC, run_at, id) AS tasks FROM orch_tasks
WHERE lease_expires_at = ?2 AND substr(lease_token, 1, 8) = ?5;
COMMIT"
));

/// [`rules::end_attempt`] with a success, for the reports `?1` (a JSON array of `[hex id, hex
/// lease token, result, attempt]`, distinct tasks) that hold their task's lease, at time `?2`,
/// with their events in input order, as one write script; returns the positions of the
/// reports it finished as one JSON array. When a task of the batch has dependents or belongs
/// to a workflow it finishes nothing: the general path then ends the whole batch, in order,
/// with what the ends mean.
static FINISH_SUCCESSES_SCRIPT: Rendered = Rendered::new(
    "BEGIN IMMEDIATE;
WITH mixed AS (SELECT 1 FROM json_each(?1) AS v JOIN orch_tasks t ON t.id = unhex(v.value ->> 0)
    WHERE t.dependents > 0 OR t.workflow_id IS NOT NULL)
SELECT json_group_array(v.key) AS finished
FROM json_each(?1) AS v JOIN orch_tasks t ON t.id = unhex(v.value ->> 0)
WHERE t.status = {success.from} AND t.lease_token = unhex(v.value ->> 1)
    AND t.attempt = v.value ->> 3 AND NOT EXISTS (SELECT 1 FROM mixed);
WITH mixed AS (SELECT 1 FROM json_each(?1) AS v JOIN orch_tasks t ON t.id = unhex(v.value ->> 0)
    WHERE t.dependents > 0 OR t.workflow_id IS NOT NULL)
INSERT INTO orch_events (kind, at, task_id, core_id, attempt, data)
SELECT {success.event}, ?2, t.id, t.core_id, t.attempt, 'null'
FROM json_each(?1) AS v JOIN orch_tasks t ON t.id = unhex(v.value ->> 0)
WHERE t.status = {success.from} AND t.lease_token = unhex(v.value ->> 1)
    AND t.attempt = v.value ->> 3 AND NOT EXISTS (SELECT 1 FROM mixed)
ORDER BY v.key;
WITH mixed AS (SELECT 1 FROM json_each(?1) AS v JOIN orch_tasks t ON t.id = unhex(v.value ->> 0)
    WHERE t.dependents > 0 OR t.workflow_id IS NOT NULL)
UPDATE orch_tasks SET status = {success.to}, updated_at = ?2, finished_at = ?2,
    result = v.value -> 2, lease_token = NULL, lease_expires_at = NULL
FROM json_each(?1) AS v
WHERE orch_tasks.id = unhex(v.value ->> 0) AND orch_tasks.lease_token = unhex(v.value ->> 1)
    AND orch_tasks.status = {success.from} AND orch_tasks.attempt = v.value ->> 3
    AND NOT EXISTS (SELECT 1 FROM mixed);
COMMIT",
);

/// Most events per multi-row insert (6 parameters each, under SQLite's 32,766).
const EVENTS_PER_INSERT: usize = 500;

/// Most successes finished by one statement.
const SUCCESSES_PER_STATEMENT: usize = 128;

/// A success to finish in the general path: (position in the batch, report).
type Success = (usize, AttemptReport);

/// Finishes, in one statement, the successes of `chunk` whose task is running under the given
/// lease and attempt; returns those tasks' engines. The rows are padded to a power of two (by
/// repeating the last one, which changes nothing) so that few statement shapes are prepared.
async fn finish_successes(
    conn: &mut SqliteConnection,
    chunk: &[Success],
    now: DateTime<Utc>,
) -> Result<HashMap<TaskId, String>> {
    const OP: &str = "finish_attempts";
    let Some(last) = chunk.last() else {
        return Ok(HashMap::new());
    };
    let rows = chunk.len().next_power_of_two();
    let mut sql = String::from("WITH v(id, token, attempt, result) AS (VALUES ");
    for i in 0..rows {
        sql.push_str(if i == 0 {
            "(?, ?, ?, ?)"
        } else {
            ", (?, ?, ?, ?)"
        });
    }
    sql.push_str(
        ") UPDATE orch_tasks SET status = {success.to}, updated_at = ?, finished_at = ?, \
         result = v.result, lease_token = NULL, lease_expires_at = NULL \
         FROM v WHERE orch_tasks.id = v.id AND orch_tasks.lease_token = v.token \
         AND orch_tasks.attempt = v.attempt AND orch_tasks.status = {success.from} \
         RETURNING orch_tasks.id, orch_tasks.core_id",
    );
    // Built only from the fixed fragments above: nothing from the caller is spliced in.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(render(&sql)));
    for (_, report) in chunk
        .iter()
        .chain(std::iter::repeat_n(last, rows - chunk.len()))
    {
        let AttemptOutcome::Succeeded { result } = &report.outcome else {
            return Err(Error::backend(OP, "a success without a result"));
        };
        query = query
            .bind(report.task_id.0)
            .bind(report.lease_token.0)
            .bind(i64::from(report.attempt))
            .bind(json_to_db(result));
    }
    let at = time_to_db(now);
    let found = query
        .bind(at)
        .bind(at)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(OP))?;
    let mut done = HashMap::with_capacity(found.len());
    for row in &found {
        let get = |e: sqlx::Error| corrupt(OP, e);
        let id: Uuid = row.try_get("id").map_err(get)?;
        done.insert(TaskId(id), row.try_get("core_id").map_err(get)?);
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
                .bind(event.engine.clone())
                .bind(event.attempt.map(i64::from))
                .bind(json_to_db(&event.data));
        }
        query.execute(&mut *conn).await.map_err(db_err(operation))?;
    }
    Ok(())
}

impl SqliteBackend {
    /// Claims up to `limit` due tasks of `engine` in claim order, of priority above `above`
    /// when given.
    async fn claim_above(
        &self,
        operation: &'static str,
        engine: &str,
        limit: usize,
        lease: Duration,
        above: Option<i32>,
    ) -> Result<Vec<Claimed>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = now();
        let expires = truncate_micros(rules::after(now, lease));
        // Eight random bytes shared by this batch's lease tokens (each ends in eight of its
        // own): with the lease expiry, they find the batch again in the script's later
        // statements, through the lease index.
        let batch = Uuid::new_v4().as_bytes()[8..].to_vec();
        let rows = self
            .write_script(
                operation,
                sqlx::query(CLAIM_SCRIPT.sql())
                    .bind(time_to_db(now))
                    .bind(time_to_db(expires))
                    .bind(engine.to_owned())
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .bind(batch)
                    .bind(crate::common::priority_floor(above)),
            )
            .await?;
        let [row] = rows.as_slice() else {
            return Err(corrupt(operation, "the claim returned no batch"));
        };
        let tasks: String = row.try_get("tasks").map_err(|e| corrupt(operation, e))?;
        let claimed = tasks_from_json(operation, &tasks)?
            .into_iter()
            .map(|(task, token)| {
                let lease_token =
                    token.ok_or_else(|| corrupt(operation, "claimed task has no lease"))?;
                Ok(Claimed { task, lease_token })
            })
            .collect::<Result<Vec<_>>>()?;
        if !claimed.is_empty() {
            self.wake_events();
        }
        Ok(claimed)
    }

    /// [`TaskStore::finish_attempts`] for any batch, in one transaction.
    async fn finish_attempts_general(
        &self,
        reports: Vec<AttemptReport>,
    ) -> Result<Vec<Result<TaskStatus>>> {
        const OP: &str = "finish_attempts";
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let now = now();
        let count = reports.len();
        let ids: Vec<TaskId> = reports.iter().map(|report| report.task_id).collect();
        // The common case first, in one statement per chunk: successes, each the first report
        // of its task in the batch. The rest (and any success that did not hold its lease)
        // then go through the general path one by one, in input order.
        let mut firsts = HashSet::with_capacity(count);
        let mut successes = Vec::new();
        let mut rest = Vec::new();
        for (index, report) in reports.into_iter().enumerate() {
            let first = firsts.insert(report.task_id);
            if first && matches!(report.outcome, AttemptOutcome::Succeeded { .. }) {
                successes.push((index, report));
            } else {
                rest.push((index, report));
            }
        }
        let mut out: Vec<Option<Result<TaskStatus>>> = (0..count).map(|_| None).collect();
        let mut events: Vec<(usize, NewEvent)> = Vec::with_capacity(count);
        let mut tx = self.begin(OP).await?;
        for chunk in successes.chunks(SUCCESSES_PER_STATEMENT) {
            let done = finish_successes(&mut tx, chunk, now).await?;
            for (index, report) in chunk {
                match done.get(&report.task_id) {
                    Some(engine) => {
                        // The rule's change, as the statement applied it: its events.
                        let change = rules::end_attempt(report.attempt, report.outcome.clone());
                        let to = change.to;
                        for draft in change.events {
                            events.push((
                                *index,
                                NewEvent::for_task(draft.kind, report.task_id, engine, draft.data)
                                    .with_attempt(report.attempt),
                            ));
                        }
                        out[*index] = Some(Ok(to));
                    }
                    None => rest.push((*index, report.clone())),
                }
            }
        }
        rest.sort_by_key(|(index, _)| *index);
        let mut requeued = false;
        for (index, report) in rest {
            // A missing task or a lost lease fails only its own item; a database error fails
            // the batch (and rolls all of it back).
            let (mut task, mut lease) = match load(&mut tx, OP, report.task_id).await {
                Ok(loaded) => loaded,
                Err(error @ Error::TaskNotFound(_)) => {
                    out[index] = Some(Err(error));
                    continue;
                }
                Err(error) => return Err(error),
            };
            if lease != Some(report.lease_token)
                || task.status != TaskStatus::Running
                || task.attempt != report.attempt
            {
                out[index] = Some(Err(Error::LeaseLost(report.task_id)));
                continue;
            }
            let mut task_events = Vec::with_capacity(2);
            let change = rules::end_attempt(report.attempt, report.outcome);
            let status = apply(change, &mut task, &mut lease, now, &mut task_events)?;
            save(&mut tx, OP, &task, lease).await?;
            events.extend(task_events.into_iter().map(|event| (index, event)));
            requeued |= status == TaskStatus::Queued;
            out[index] = Some(Ok(status));
        }
        // In input order (stable: one item's own events keep theirs).
        events.sort_by_key(|(index, _)| *index);
        let mut events: Vec<NewEvent> = events.into_iter().map(|(_, event)| event).collect();
        // What the ends mean for the tasks waiting for them, after the reports' own events.
        let ended: Vec<TaskId> = out
            .iter()
            .zip(&ids)
            .filter(|(answer, _)| matches!(answer, Some(Ok(status)) if status.is_terminal()))
            .map(|(_, id)| *id)
            .collect();
        if !ended.is_empty() {
            let settled = super::graph::settle(&mut tx, OP, ended, Default::default(), now).await?;
            requeued |= settled.released;
            events.extend(settled.events);
        }
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

    /// One change by a rule that reads the task, with its events, in one write transaction.
    async fn transition(
        &self,
        operation: &'static str,
        id: TaskId,
        rule: impl FnOnce(&Task) -> Result<rules::Change>,
    ) -> Result<Task> {
        let now = now();
        let mut tx = self.begin(operation).await?;
        let (mut task, mut lease) = load(&mut tx, operation, id).await?;
        let change = rule(&task)?;
        let mut events = Vec::with_capacity(1);
        apply(change, &mut task, &mut lease, now, &mut events)?;
        save(&mut tx, operation, &task, lease).await?;
        let mut released = false;
        if task.status.is_terminal() {
            let settled =
                super::graph::settle(&mut tx, operation, vec![id], Default::default(), now).await?;
            released = settled.released;
            events.extend(settled.events);
        }
        insert_events(&mut tx, operation, &events, now).await?;
        tx.commit().await.map_err(db_err(operation))?;
        if released {
            self.wake_tasks();
        }
        self.wake_events();
        Ok(task)
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

    async fn create_workflow(
        &self,
        workflow: NewWorkflow,
        tasks: Vec<NewTask>,
    ) -> Result<CreatedWorkflow> {
        const OP: &str = "create_workflow";
        let now = now();
        let id = workflow.id;
        let mut tx = self.begin(OP).await?;
        let graph = super::graph::insert_graph(&mut tx, tasks, Some(workflow), now).await?;
        insert_events(&mut tx, OP, &graph.events, now).await?;
        tx.commit().await.map_err(db_err(OP))?;
        if graph.queued {
            self.wake_tasks();
        }
        if !graph.events.is_empty() {
            self.wake_events();
        }
        let (workflow, created) = graph.workflow.ok_or(Error::WorkflowNotFound(id))?;
        Ok(CreatedWorkflow {
            workflow,
            created,
            tasks: graph.created,
        })
    }

    async fn get_workflow(&self, id: WorkflowId) -> Result<Option<WorkflowInfo>> {
        const OP: &str = "get_workflow";
        let mut conn = self.readers.acquire().await.map_err(db_err(OP))?;
        super::graph::get_workflow(&mut conn, OP, id).await
    }

    async fn workflow_tasks(&self, id: WorkflowId) -> Result<Vec<WorkflowTask>> {
        let mut conn = self
            .readers
            .acquire()
            .await
            .map_err(db_err("workflow_tasks"))?;
        super::graph::workflow_tasks(&mut conn, id).await
    }

    async fn list_parents(
        &self,
        child: TaskId,
        from: u32,
        limit: usize,
    ) -> Result<Vec<ParentTask>> {
        let mut conn = self
            .readers
            .acquire()
            .await
            .map_err(db_err("list_parents"))?;
        super::graph::list_parents(&mut conn, child, from, limit).await
    }

    async fn cancel_workflow(&self, id: WorkflowId) -> Result<WorkflowInfo> {
        const OP: &str = "cancel_workflow";
        let now = now();
        let mut tx = self.begin(OP).await?;
        let (events, released) = super::graph::cancel_workflow(&mut tx, id, now).await?;
        insert_events(&mut tx, OP, &events, now).await?;
        let info = super::graph::get_workflow(&mut tx, OP, id)
            .await?
            .ok_or(Error::WorkflowNotFound(id))?;
        tx.commit().await.map_err(db_err(OP))?;
        if released {
            self.wake_tasks();
        }
        self.wake_events();
        Ok(info)
    }

    async fn retry_workflow(&self, id: WorkflowId) -> Result<WorkflowInfo> {
        const OP: &str = "retry_workflow";
        let now = now();
        let mut tx = self.begin(OP).await?;
        let (events, queued) = super::graph::retry_workflow(&mut tx, id, now).await?;
        insert_events(&mut tx, OP, &events, now).await?;
        let info = super::graph::get_workflow(&mut tx, OP, id)
            .await?
            .ok_or(Error::WorkflowNotFound(id))?;
        tx.commit().await.map_err(db_err(OP))?;
        if queued {
            self.wake_tasks();
        }
        self.wake_events();
        Ok(info)
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

    async fn task_by_idempotency_key(&self, key: &str) -> Result<Option<Task>> {
        const OP: &str = "task_by_idempotency_key";
        let row = sqlx::query("SELECT * FROM orch_tasks WHERE idempotency_key = ?")
            .bind(key)
            .fetch_optional(&self.readers)
            .await
            .map_err(db_err(OP))?;
        row.map(|row| task_from_row(OP, &row).map(|(task, _)| task))
            .transpose()
    }

    async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<Task>> {
        const OP: &str = "list_tasks";
        let limit = i64::try_from(filter.effective_limit()).unwrap_or(1000);
        // One query, read forwards or backwards: `after` is the cursor in that direction.
        macro_rules! list {
            ($after:literal, $order:literal) => {
                concat!(
                    "SELECT * FROM orch_tasks WHERE (?1 IS NULL OR status = ?1) \
                     AND (?2 IS NULL OR core_id = ?2) AND (?3 IS NULL OR id ",
                    $after,
                    " ?3) AND (?5 IS NULL OR (status = {queued} AND (run_at <= ?6) = ?5)) \
                     ORDER BY id",
                    $order,
                    " LIMIT ?4"
                )
            };
        }
        static NEWEST: Rendered = Rendered::new(list!("<", " DESC"));
        static OLDEST: Rendered = Rendered::new(list!(">", ""));
        let sql = if filter.newest_first {
            NEWEST.sql()
        } else {
            OLDEST.sql()
        };
        let rows = sqlx::query(sql)
            .bind(filter.status.map(TaskStatus::as_str))
            .bind(filter.engine.as_deref())
            .bind(filter.after.map(|id| id.0))
            .bind(limit)
            .bind(filter.due)
            .bind(time_to_db(now()))
            .fetch_all(&self.readers)
            .await
            .map_err(db_err(OP))?;
        rows.iter()
            .map(|row| task_from_row(OP, row).map(|(task, _)| task))
            .collect()
    }

    async fn claim_tasks(
        &self,
        engine: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>> {
        self.claim_above("claim_tasks", engine, limit, lease, None)
            .await
    }

    async fn claim_tasks_above(
        &self,
        engine: &str,
        limit: usize,
        lease: Duration,
        priority: i32,
    ) -> Result<Vec<Claimed>> {
        self.claim_above("claim_tasks_above", engine, limit, lease, Some(priority))
            .await
    }

    async fn next_run_at(&self, engine: &str) -> Result<Option<DateTime<Utc>>> {
        const OP: &str = "next_run_at";
        static NEXT_RUN_AT: Rendered = Rendered::new(
            "SELECT min(run_at) FROM orch_tasks WHERE status = {queued} AND core_id = ?",
        );
        let at: Option<i64> = sqlx::query_scalar(NEXT_RUN_AT.sql())
            .bind(engine)
            .fetch_one(&self.readers)
            .await
            .map_err(db_err(OP))?;
        at.map(|at| time_from_db(OP, at)).transpose()
    }

    async fn renew_leases(
        &self,
        leases: Vec<HeldLease>,
        lease: Duration,
    ) -> Result<Vec<Option<DateTime<Utc>>>> {
        const OP: &str = "renew_leases";
        static RENEW: Rendered = Rendered::new(
            "UPDATE orch_tasks SET lease_expires_at = ? \
             WHERE id = ? AND lease_token = ? AND status = {running}",
        );
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let expires = truncate_micros(rules::after(now(), lease));
        let mut tx = self.begin(OP).await?;
        let mut out = Vec::with_capacity(leases.len());
        for held in leases {
            let done = sqlx::query(RENEW.sql())
                .bind(time_to_db(expires))
                .bind(held.task_id.0)
                .bind(held.lease_token.0)
                .execute(&mut *tx)
                .await
                .map_err(db_err(OP))?;
            out.push((done.rows_affected() > 0).then_some(expires));
        }
        tx.commit().await.map_err(db_err(OP))?;
        Ok(out)
    }

    async fn finish_attempts(
        &self,
        reports: Vec<AttemptReport>,
    ) -> Result<Vec<Result<TaskStatus>>> {
        const OP: &str = "finish_attempts";
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        // The common case, a batch of successes of distinct tasks, is one write script; a
        // success that did not hold its lease then takes the general path, which tells why.
        let mut ids = HashSet::with_capacity(reports.len());
        let all_successes = reports.iter().all(|report| {
            matches!(report.outcome, AttemptOutcome::Succeeded { .. }) && ids.insert(report.task_id)
        });
        if !all_successes {
            return self.finish_attempts_general(reports).await;
        }
        let mut input = String::with_capacity(reports.len() * 96);
        input.push('[');
        for (i, report) in reports.iter().enumerate() {
            let AttemptOutcome::Succeeded { result } = &report.outcome else {
                unreachable!("checked above");
            };
            if i > 0 {
                input.push(',');
            }
            input.push_str(&format!(
                "[\"{}\",\"{}\",{},{}]",
                report.task_id.0.simple(),
                report.lease_token.0.simple(),
                json_to_db(result),
                report.attempt,
            ));
        }
        input.push(']');
        let rows = self
            .write_script(
                OP,
                sqlx::query(FINISH_SUCCESSES_SCRIPT.sql())
                    .bind(input)
                    .bind(time_to_db(now())),
            )
            .await?;
        let [row] = rows.as_slice() else {
            return Err(corrupt(OP, "finishing returned no answer"));
        };
        let finished: String = row.try_get("finished").map_err(|e| corrupt(OP, e))?;
        let finished: Vec<usize> = serde_json::from_str(&finished).map_err(|e| corrupt(OP, e))?;
        let succeeded = rules::end_attempt(
            1,
            AttemptOutcome::Succeeded {
                result: Value::Null,
            },
        )
        .to;
        let mut out: Vec<Option<Result<TaskStatus>>> = (0..reports.len()).map(|_| None).collect();
        for index in finished {
            let slot = out
                .get_mut(index)
                .ok_or_else(|| corrupt(OP, "finished a report that was not sent"))?;
            *slot = Some(Ok(succeeded));
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
        self.transition("cancel_task", id, |task| rules::cancel(id, task.status))
            .await
    }

    async fn cancel_task_by(&self, id: TaskId, actor: &str) -> Result<Task> {
        self.transition("cancel_task", id, |task| {
            rules::cancel_by(id, task.status, actor)
        })
        .await
    }

    async fn resolve_task(&self, id: TaskId, resolution: Resolution) -> Result<Task> {
        self.transition("resolve_task", id, |task| {
            rules::resolve(id, task.status, resolution)
        })
        .await
    }

    async fn delete_task(&self, id: TaskId) -> Result<Task> {
        const OP: &str = "delete_task";
        static DEPENDED_ON: Rendered =
            Rendered::new("SELECT EXISTS (SELECT 1 FROM orch_task_deps WHERE parent_id = ?)");
        let mut tx = self.begin(OP).await?;
        let (task, _) = load(&mut tx, OP, id).await?;
        let waited_for: bool = sqlx::query_scalar(DEPENDED_ON.sql())
            .bind(id.0)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        if let Some(refused) = rules::deletion_refused(&task, waited_for) {
            return Err(refused);
        }
        sqlx::query("DELETE FROM orch_tasks WHERE id = ?")
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        sqlx::query("DELETE FROM orch_task_deps WHERE child_id = ?")
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        tx.commit().await.map_err(db_err(OP))?;
        Ok(task)
    }

    async fn retry_task(&self, id: TaskId, actor: &str) -> Result<Task> {
        // Dependencies never change once stored (a task may gain dependents, which the check
        // then sees).
        let in_graph: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM orch_tasks WHERE id = ?1 AND dependents > 0) \
             OR EXISTS (SELECT 1 FROM orch_task_deps WHERE child_id = ?1)",
        )
        .bind(id.0)
        .fetch_one(&self.readers)
        .await
        .map_err(db_err("retry_task"))?;
        let task = self
            .transition("retry_task", id, |task| match task.workflow_id {
                None if in_graph => Err(rules::retry_refused_in_graph(id)),
                Some(workflow) => Err(rules::retry_refused_in_workflow(id, workflow)),
                None => rules::retry(id, task.status, actor),
            })
            .await?;
        self.wake_tasks();
        Ok(task)
    }

    async fn requeue_task(&self, id: TaskId, actor: &str) -> Result<Task> {
        let task = self
            .transition("requeue_task", id, |task| {
                rules::requeue(id, task.status, task.run_at <= now(), actor)
            })
            .await?;
        self.wake_tasks();
        Ok(task)
    }

    async fn rescue_expired(&self, limit: usize) -> Result<Vec<Task>> {
        const OP: &str = "rescue_expired";
        static EXPIRED: Rendered = Rendered::new(
            "SELECT * FROM orch_tasks WHERE status = {running} AND lease_expires_at <= ? \
             ORDER BY lease_expires_at, id LIMIT ?",
        );
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = now();
        let mut tx = self.begin(OP).await?;
        let rows = sqlx::query(EXPIRED.sql())
            .bind(time_to_db(now))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        let mut rescued = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let (mut task, mut lease) = task_from_row(OP, row)?;
            let change = rules::rescue(task.attempt, task.max_attempts);
            apply(change, &mut task, &mut lease, now, &mut events)?;
            save(&mut tx, OP, &task, lease).await?;
            rescued.push(task);
        }
        let ended: Vec<TaskId> = rescued
            .iter()
            .filter(|task| task.status.is_terminal())
            .map(|task| task.id)
            .collect();
        if !ended.is_empty() {
            let settled = super::graph::settle(&mut tx, OP, ended, Default::default(), now).await?;
            events.extend(settled.events);
        }
        insert_events(&mut tx, OP, &events, now).await?;
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
        let pruned = super::graph::prune(&mut tx, before, limit).await?;
        tx.commit().await.map_err(db_err(OP))?;
        Ok(pruned)
    }

    async fn queue_depth(&self) -> Result<Vec<QueueDepth>> {
        const OP: &str = "queue_depth";
        static DEPTH: Rendered = Rendered::new(
            "SELECT core_id, priority, count(*) AS n FROM orch_tasks WHERE status = {queued} \
             GROUP BY core_id, priority ORDER BY core_id, priority",
        );
        let rows = sqlx::query(DEPTH.sql())
            .fetch_all(&self.readers)
            .await
            .map_err(db_err(OP))?;
        rows.iter()
            .map(|row| {
                let get = |e: sqlx::Error| corrupt(OP, e);
                let n: i64 = row.try_get("n").map_err(get)?;
                Ok(QueueDepth {
                    engine: row.try_get("core_id").map_err(get)?,
                    priority: row.try_get("priority").map_err(get)?,
                    queued: u64::try_from(n).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn count_tasks(&self) -> Result<Vec<EngineCounts>> {
        const OP: &str = "count_tasks";
        let rows = sqlx::query(
            "SELECT core_id, status, run_at > ? AS delayed, count(*) AS n FROM orch_tasks \
             GROUP BY core_id, status, delayed ORDER BY core_id",
        )
        .bind(time_to_db(now()))
        .fetch_all(&self.readers)
        .await
        .map_err(db_err(OP))?;
        let mut out: Vec<EngineCounts> = Vec::new();
        for row in &rows {
            let get = |e: sqlx::Error| corrupt(OP, e);
            let engine: String = row.try_get("core_id").map_err(get)?;
            let status: String = row.try_get("status").map_err(get)?;
            let status: TaskStatus = status.parse().map_err(|e| corrupt(OP, e))?;
            let delayed: bool = row.try_get("delayed").map_err(get)?;
            let n: i64 = row.try_get("n").map_err(get)?;
            if out.last().is_none_or(|last| last.engine != engine) {
                out.push(EngineCounts::new(engine));
            }
            if let Some(counts) = out.last_mut() {
                counts.add(status, delayed, u64::try_from(n).unwrap_or(0));
            }
        }
        Ok(out)
    }

    fn task_wakeups(&self) -> Option<ChangeSignal> {
        Some(self.task_wakeups.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every statement written with rule placeholders renders (a rule whose shape they cannot
    /// follow, or a misspelt placeholder, fails here).
    #[test]
    fn every_statement_follows_the_rules() {
        for statement in [&CLAIM_SCRIPT, &FINISH_SUCCESSES_SCRIPT, &CREATED_EVENTS] {
            assert!(!statement.sql().contains('{'));
        }
    }
}
