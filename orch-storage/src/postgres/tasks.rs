//! The PostgreSQL task queue: every change is one of orch-core's [`rules`], applied by one
//! statement that writes its events too. A claim, a new task and a batch of successes apply
//! their rule inside the database ([`statements`](super::statements) names states and events
//! through the rules); every other change is computed by its rule here and handed to
//! [`APPLY_CHANGES`] as parameters, guarded by the state it was computed from.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orch_core::backend::{
    AttemptOutcome, AttemptReport, ChangeSignal, Claimed, CreatedWorkflow, EngineRoom, HeldLease,
    NewTask, NewWorkflow, QueueDepth, TaskStore, rules,
};
use orch_core::{
    Created, EngineCounts, Error, LeaseToken, ParentTask, Resolution, Result, Task, TaskFilter,
    TaskId, TaskStatus, WorkflowId, WorkflowInfo, WorkflowTask,
};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::statements::{
    APPLY_CHANGES, CLAIM_TASKS, CLAIM_TASKS_AFTER, CREATE_CLAIMED, CREATE_TASK, CREATE_TASKS,
    CREATE_TASKS_UNKEYED, EXPIRED_LEASES, FINISH_SUCCESSES,
};
use super::{PostgresBackend, count, db_micros, task_from_row, tasks_from_rows};
use crate::common::{corrupt, db_err, from_micros, micros, truncate_micros};
use crate::rule_sql::Rendered;

/// How many times a change computed from a task's state is tried again when the task changed
/// in between (a cancel racing a claim, say).
const CHANGE_TRIES: usize = 8;

/// Most claimed tasks remembered as having dependents or a workflow (see
/// `PostgresBackend::graph_claims`).
const GRAPH_CLAIMS_MAX: usize = 65_536;

/// Most outcomes of tasks in graphs recorded by one statement (more when one caller's batch
/// alone is larger).
const GRAPH_BATCH_MAX: usize = 512;

/// A caller's outcomes waiting for their statement (under the caller's number), and where
/// its answer goes.
type GraphJob = (
    u64,
    Vec<AttemptReport>,
    tokio::sync::oneshot::Sender<Result<Vec<Result<TaskStatus>>>>,
);

/// Batches waiting for [`PostgresBackend::finish_in_graph`], in arrival order.
#[derive(Default)]
struct GraphQueue {
    jobs: std::collections::VecDeque<GraphJob>,
    last_number: u64,
}

/// While claims resume, the least time between two claims from the head (which find what the
/// resumed ones cannot see: a more urgent task, a task whose transaction began before the last
/// claim and committed after it, a task given back), and the multiple of the last one's
/// duration that must pass as well, so they take a small share of the database (up to
/// [`HEAD_CLAIM_AT_LEAST_EVERY`]).
const HEAD_CLAIM_EVERY: Duration = Duration::from_millis(250);
const HEAD_CLAIM_SHARE: u32 = 20;
const HEAD_CLAIM_AT_LEAST_EVERY: Duration = Duration::from_secs(5);

/// Where a task stands in claim order: priority (higher first), due time, id.
type ClaimKey = (i32, DateTime<Utc>, Uuid);

/// Per engine, where its claims resume while claims from the head of the index are slow
/// (slower than `slow`: see [`PostgresOptions::slow_claim`](super::PostgresOptions)).
pub(super) struct ClaimFloors {
    slow: Duration,
    floors: std::sync::Mutex<Floors>,
}

/// The floors, and how many times they were cleared: a claim that began before a clear sets
/// no floor when it ends (what made the clear may have come too late for its snapshot).
#[derive(Default)]
struct Floors {
    by_engine: HashMap<String, Floor>,
    clears: u64,
}

/// The last task an engine claimed (claim order: priority, run_at, id), if any, and when its
/// next claim from the head is due. Only kept while claims from the head are slow.
struct Floor {
    last: Option<ClaimKey>,
    head_due: std::time::Instant,
}

impl ClaimFloors {
    pub(super) fn new(slow: Duration) -> Self {
        ClaimFloors {
            slow,
            floors: std::sync::Mutex::new(Floors::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Floors> {
        self.floors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the next regular claim of `engine` resumes, if it resumes, and the count of
    /// clears to hand back when it ends.
    fn resume(&self, engine: &str) -> (Option<ClaimKey>, u64) {
        let mut floors = self.lock();
        let clears = floors.clears;
        let Some(floor) = floors.by_engine.get_mut(engine) else {
            return (None, clears);
        };
        let now = std::time::Instant::now();
        if now < floor.head_due {
            return (floor.last, clears);
        }
        // This claim goes from the head; the others that start before it ends still resume.
        floor.head_due = now + HEAD_CLAIM_EVERY;
        (None, clears)
    }

    /// When the next claim from the head is due, while `engine`'s claims resume.
    fn head_due(&self, engine: &str) -> Option<std::time::Instant> {
        let floors = self.lock();
        let floor = floors.by_engine.get(engine)?;
        (std::time::Instant::now() < floor.head_due).then_some(floor.head_due)
    }

    /// A claim from the head that began after `clears` clears took `took`: claims resume
    /// after it while that is slow.
    fn after_head(&self, engine: &str, clears: u64, took: Duration, last: Option<ClaimKey>) {
        let mut floors = self.lock();
        if took < self.slow || floors.clears != clears {
            floors.by_engine.remove(engine);
            return;
        }
        let floors = &mut floors.by_engine;
        // A slow claim that found nothing leaves an existing floor's place as it was, and
        // makes none (no entry for an engine that never claimed here).
        if last.is_none() && !floors.contains_key(engine) {
            return;
        }
        let wait = HEAD_CLAIM_EVERY
            .max(took.saturating_mul(HEAD_CLAIM_SHARE))
            .min(HEAD_CLAIM_AT_LEAST_EVERY);
        let floor = floors.entry(engine.to_owned()).or_insert(Floor {
            last: None,
            head_due: std::time::Instant::now(),
        });
        floor.head_due = std::time::Instant::now() + wait;
        if last.is_some() {
            floor.last = last;
        }
    }

    /// Tasks before the floors in claim order may be queued now (given back, requeued,
    /// released, stored by a graph): the next claims start from the head.
    pub(super) fn clear(&self) {
        let mut floors = self.lock();
        floors.clears = floors.clears.wrapping_add(1);
        floors.by_engine.clear();
    }

    /// Tasks were stored: an engine whose floor one of them precedes in claim order (more
    /// urgent, or due earlier) claims from the head next.
    fn created(&self, created: &[Created]) {
        let mut floors = self.lock();
        if floors.by_engine.is_empty() {
            return;
        }
        let floors = &mut floors.by_engine;
        for task in created.iter().filter(|c| c.created).map(|c| &c.task) {
            let precedes = floors
                .get(&task.engine)
                .and_then(|floor| floor.last)
                .is_some_and(|floor| {
                    claim_order_after(floor, (task.priority, task.run_at, task.id.0))
                });
            if precedes {
                floors.remove(&task.engine);
            }
        }
    }

    /// A resumed claim that began after `clears` clears claimed up to `last`.
    fn after_resumed(&self, engine: &str, clears: u64, last: Option<ClaimKey>) {
        let mut floors = self.lock();
        if floors.clears != clears {
            return;
        }
        // Only forward: a resumed claim that ends after a claim from the head (which set the
        // floor where it stopped) must not move it back.
        if let Some(floor) = floors.by_engine.get_mut(engine)
            && let Some(last) = last
            && floor.last.is_none_or(|at| claim_order_after(last, at))
        {
            floor.last = Some(last);
        }
    }
}

/// Whether the task at `a` comes after the one at `b` in claim order (priority first, higher
/// first; then due time, then id).
fn claim_order_after(a: ClaimKey, b: ClaimKey) -> bool {
    a.0 < b.0 || (a.0 == b.0 && (a.1, a.2) > (b.1, b.2))
}

/// The queue and the turn of [`PostgresBackend::finish_in_graph`].
#[derive(Default)]
pub(super) struct GraphOutcomes {
    queue: std::sync::Mutex<GraphQueue>,
    /// Held by the caller whose statement runs, with the connection the statements run on
    /// (kept between turns, so it plans the statement once), when the pool can spare one.
    turn: tokio::sync::Mutex<Option<sqlx::pool::PoolConnection<sqlx::Postgres>>>,
    /// The backend is closing: no connection is kept any more.
    closed: std::sync::atomic::AtomicBool,
}

impl GraphOutcomes {
    /// Closes the kept connection (once its statement is done).
    pub(super) async fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(conn) = self.turn.lock().await.take() {
            let _ = conn.close().await;
        }
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, GraphQueue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The same failure for each caller whose outcomes one failed statement carried.
fn copy_error(error: &Error) -> Error {
    match error {
        Error::Unavailable {
            operation, message, ..
        } => Error::Unavailable {
            operation,
            message: message.clone(),
            cause: None,
        },
        Error::Backend {
            operation, message, ..
        } => Error::backend(operation, message.clone()),
        other => Error::backend("finish_attempts", other.to_string()),
    }
}

/// The answer to a caller whose outcomes went into the statement of a call that was dropped
/// while it ran: they may or may not have been recorded, so the caller may try again (an
/// outcome already recorded then answers that the lease is gone).
fn interrupted() -> Error {
    Error::Unavailable {
        operation: "finish_attempts",
        message: "recording was interrupted (the call that carried these outcomes was dropped); \
                  they may have been recorded"
            .to_owned(),
        cause: None,
    }
}

/// Takes a caller's batch out of the queue of [`PostgresBackend::finish_in_graph`] when the
/// call ends, if no statement took it (the call was dropped before its turn).
struct LeaveQueue<'a> {
    outcomes: &'a GraphOutcomes,
    number: u64,
}

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        let mut queue = self.outcomes.lock_queue();
        if queue
            .jobs
            .iter()
            .any(|(number, _, _)| *number == self.number)
        {
            queue.jobs.retain(|(number, _, _)| *number != self.number);
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
    let text = value.to_string();
    // serde_json writes NUL as `\u0000`; anything else needs no cleaning.
    if text.contains("\\u0000") {
        storable_value(value).to_string()
    } else {
        text
    }
}

/// `value` with every NUL character (in keys and strings) replaced by U+FFFD, as
/// [`storable_json`] stores it.
pub(super) fn storable_value(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(storable(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(storable_value).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| (storable(key), storable_value(value)))
                .collect(),
        ),
        other => other,
    }
}

/// [`CREATE_TASK`]: one task, scalar parameters.
async fn create_one(
    conn: &mut PgConnection,
    task: &NewTask,
    notify_payload: &str,
) -> Result<Vec<sqlx::postgres::PgRow>> {
    const OP: &str = "create_tasks";
    sqlx::query(CREATE_TASK.sql())
        .bind(task.id.0)
        .bind(task.engine.as_str())
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
        .bind(task.traceparent.as_deref())
        .bind(task.tracestate.as_deref())
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(OP))
}

/// New tasks' columns, one array each, as [`CREATE_TASKS`] and the graph statement take them
/// ([`CREATE_TASKS_UNKEYED`] takes a column the tasks share as one value instead).
pub(super) struct TaskColumns<'a> {
    ids: Vec<Uuid>,
    core_ids: Vec<&'a str>,
    priorities: Vec<i32>,
    timeouts: Vec<i64>,
    max_attempts: Vec<i32>,
    not_before: Vec<Option<DateTime<Utc>>>,
    delays: Vec<i64>,
    payloads: Vec<String>,
    metadata: Vec<String>,
    keys: Vec<Option<&'a str>>,
    locks: Vec<String>,
    /// Bound where each statement wants them.
    pub(super) traceparents: Vec<Option<&'a str>>,
    pub(super) tracestates: Vec<Option<&'a str>>,
}

impl<'a> TaskColumns<'a> {
    pub(super) fn of(tasks: &'a [NewTask]) -> Result<Self> {
        let n = tasks.len();
        let mut columns = TaskColumns {
            ids: Vec::with_capacity(n),
            core_ids: Vec::with_capacity(n),
            priorities: Vec::with_capacity(n),
            timeouts: Vec::with_capacity(n),
            max_attempts: Vec::with_capacity(n),
            not_before: Vec::with_capacity(n),
            delays: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            locks: Vec::with_capacity(n),
            traceparents: Vec::with_capacity(n),
            tracestates: Vec::with_capacity(n),
        };
        for task in tasks {
            columns.ids.push(task.id.0);
            columns.core_ids.push(task.engine.as_str());
            columns.priorities.push(task.priority);
            columns.timeouts.push(micros(task.timeout));
            columns
                .max_attempts
                .push(i32::try_from(task.max_attempts).unwrap_or(i32::MAX));
            columns.not_before.push(task.not_before);
            columns.delays.push(db_micros(task.delay));
            columns.payloads.push(task.payload.to_string());
            columns.metadata.push(task.metadata.to_string());
            columns.keys.push(task.idempotency_key.as_deref());
            columns.locks.push(serde_json::to_string(&task.locks)?);
            columns.traceparents.push(task.traceparent.as_deref());
            columns.tracestates.push(task.tracestate.as_deref());
        }
        Ok(columns)
    }

    /// Binds the columns as `$1` to `$11` (id to locks), in that order.
    pub(super) fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.ids)
            .bind(&self.core_ids)
            .bind(&self.priorities)
            .bind(&self.timeouts)
            .bind(&self.max_attempts)
            .bind(&self.not_before)
            .bind(&self.delays)
            .bind(&self.payloads)
            .bind(&self.metadata)
            .bind(&self.keys)
            .bind(&self.locks)
    }
}

/// [`CREATE_TASKS`]: one array per column.
async fn create_batch(
    conn: &mut PgConnection,
    tasks: &[NewTask],
    notify_payload: &str,
) -> Result<Vec<sqlx::postgres::PgRow>> {
    const OP: &str = "create_tasks";
    let columns = TaskColumns::of(tasks)?;
    columns
        .bind(sqlx::query(CREATE_TASKS.sql()))
        .bind(notify_payload)
        .bind(&columns.traceparents)
        .bind(&columns.tracestates)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(OP))
}

/// A column of a batch as [`CREATE_TASKS_UNKEYED`] takes it: every task's value, or, when
/// every task has the same one, no values and that one alone.
fn shared<T: PartialEq>(values: &[T]) -> (&[T], Option<&T>) {
    match values.split_first() {
        Some((first, rest)) if rest.iter().all(|value| value == first) => {
            (&values[..0], Some(first))
        }
        _ => (values, None),
    }
}

/// [`CREATE_TASKS_UNKEYED`]: a batch without idempotency keys, every task stored by one
/// statement; each is returned as stored (the statement returns only its time).
async fn create_unkeyed(
    conn: &mut PgConnection,
    tasks: Vec<NewTask>,
    notify_payload: &str,
) -> Result<Vec<Created>> {
    const OP: &str = "create_tasks";
    let c = TaskColumns::of(&tasks)?;
    let (core_ids, core_id) = shared(&c.core_ids);
    let (priorities, priority) = shared(&c.priorities);
    let (timeouts, timeout) = shared(&c.timeouts);
    let (max_attempts, most_attempts) = shared(&c.max_attempts);
    let (not_befores, not_before) = shared(&c.not_before);
    let (delays, delay) = shared(&c.delays);
    let (payloads, payload) = shared(&c.payloads);
    let (metadatas, metadata) = shared(&c.metadata);
    let (locks, lock_list) = shared(&c.locks);
    let (traceparents, traceparent) = shared(&c.traceparents);
    let (tracestates, tracestate) = shared(&c.tracestates);
    let row = sqlx::query(CREATE_TASKS_UNKEYED.sql())
        .bind(&c.ids)
        .bind(core_ids)
        .bind(core_id.copied())
        .bind(priorities)
        .bind(priority.copied())
        .bind(timeouts)
        .bind(timeout.copied())
        .bind(max_attempts)
        .bind(most_attempts.copied())
        .bind(not_befores)
        .bind(not_before.copied().flatten())
        .bind(delays)
        .bind(delay.copied())
        .bind(payloads)
        .bind(payload.map(String::as_str))
        .bind(metadatas)
        .bind(metadata.map(String::as_str))
        .bind(locks)
        .bind(lock_list.map(String::as_str))
        .bind(traceparents)
        .bind(traceparent.copied().flatten())
        .bind(tracestates)
        .bind(tracestate.copied().flatten())
        .bind(notify_payload)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err(OP))?;
    let at: DateTime<Utc> = row.try_get("at").map_err(|e| corrupt(OP, e))?;
    Ok(tasks
        .into_iter()
        .map(|mut new| {
            // As the statement took it: the delay in whole microseconds, capped; the start
            // time in whole microseconds, as is the result.
            new.delay = from_micros(db_micros(new.delay));
            let run_at = truncate_micros(rules::first_run_at(&new, at));
            stored(new, at, run_at)
        })
        .collect())
}

/// A new task as stored at `created_at`, due at `run_at`.
fn stored(mut new: NewTask, created_at: DateTime<Utc>, run_at: DateTime<Utc>) -> Created {
    // As stored: the timeout in whole microseconds.
    new.timeout = from_micros(micros(new.timeout));
    let (task, _) = rules::create(new, created_at, run_at);
    Created {
        task,
        created: true,
    }
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
        _ if tasks.iter().all(|task| task.idempotency_key.is_none()) => {
            return Ok((create_unkeyed(conn, tasks, &notify_payload).await?, true));
        }
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
    for new in tasks {
        if let Some(&(run_at, created_at)) = inserted.get(&new.id.0) {
            out.push(stored(new, created_at, run_at));
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

/// One change for [`APPLY_CHANGES`]: the task, the state the change was computed from (its
/// guard) and the change.
pub(super) struct Entry {
    pub(super) id: TaskId,
    /// The lease token the task must hold (`None`: it must hold none).
    pub(super) token: Option<LeaseToken>,
    /// The attempt counter it must be at, if that matters.
    pub(super) attempt: Option<u32>,
    /// Whether its lease must have expired by the database clock.
    pub(super) expired: bool,
    /// Whether it must be marked to end by a parent (a waiting task ended by the sweep).
    pub(super) doomed: bool,
    /// Whether it must not be due yet by the database clock (an operator's requeue).
    pub(super) not_due: bool,
    pub(super) change: rules::Change,
}

impl Entry {
    /// An entry guarded by the state alone (no lease, no attempt).
    pub(super) fn on(id: TaskId, change: rules::Change) -> Self {
        Entry {
            id,
            token: None,
            attempt: None,
            expired: false,
            doomed: false,
            not_due: false,
            change,
        }
    }
}

/// How many times a statement asking to be run again (SQLSTATE 40001: a parent gained a
/// dependent after its snapshot, or was busy) is run again before the call fails.
const RERUNS: u32 = 40;

/// Whether `error` asks for the statement to be run again on a fresh snapshot: 40001 (raised
/// by the statements themselves, see the migration's `orch_raise`) or a deadlock victim.
pub(super) fn asks_to_rerun(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if db.code().is_some_and(|code| code == "40001" || code == "40P01"))
}

/// The pause before rerun number `n` (from 1): short, growing, with jitter.
pub(super) fn rerun_pause(n: u32) -> Duration {
    let base = Duration::from_micros(500).saturating_mul(1 << n.min(6));
    // Jitter from a random UUID's bits (no random number crate here).
    let jitter = (Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
    base.mul_f64(0.5 + jitter)
}

/// What [`APPLY_CHANGES`] did with one entry.
pub(super) enum Applied {
    /// The task as changed.
    Changed(Box<Task>),
    /// The task's new state, when the caller asked for no more (`HandOff::statuses_only`).
    Status(TaskStatus),
    /// The guard did not hold (or the task is gone: `exists` is false).
    Refused { exists: bool },
}

impl PostgresBackend {
    /// After a graph was stored: wakes, ends the tasks it stored marked to end, and returns
    /// the tasks (those ended read again) and the workflow as they are now.
    async fn after_graph(
        &self,
        graph: super::graph::StoredGraph,
    ) -> Result<(Vec<Created>, Option<(WorkflowInfo, bool)>)> {
        const OP: &str = "create_tasks";
        let super::graph::StoredGraph {
            mut created,
            workflow,
            doomed,
            stored,
        } = graph;
        if stored {
            self.claim_floors.clear();
            self.wake_tasks();
            self.wake_events();
        }
        if !doomed {
            return Ok((created, workflow));
        }
        self.settle(OP, &self.pool, usize::MAX).await?;
        for c in created.iter_mut().filter(|c| c.created) {
            if let Some(task) = self.get_task(c.task.id).await? {
                c.task = task;
            }
        }
        let workflow = match workflow {
            Some((info, made)) => Some((self.get_workflow(info.id).await?.unwrap_or(info), made)),
            None => None,
        };
        Ok((created, workflow))
    }

    /// The notification of a statement ending attempts: always sent when it may requeue a
    /// task, rate-limited when it only appends events.
    fn finish_hint(&self, may_requeue: bool) -> Option<String> {
        if may_requeue {
            Some(self.notify_payload(true))
        } else {
            self.event_hint()
        }
    }

    /// Runs [`APPLY_CHANGES`] on `pool` (again while it asks to be), then ends the waiting
    /// tasks it marked ([`PostgresBackend::settle`]); answers in input order.
    pub(super) async fn apply_changes(
        &self,
        operation: &'static str,
        pool: &PgPool,
        entries: Vec<Entry>,
    ) -> Result<Vec<Applied>> {
        Ok(self
            .apply_changes_claiming(operation, pool, None, entries, &HandOff::default())
            .await?
            .0)
    }

    /// [`apply_changes`](Self::apply_changes) that claims, in the same statement, released
    /// tasks as `hand` allows; returns them too.
    async fn apply_changes_claiming(
        &self,
        operation: &'static str,
        pool: &PgPool,
        conn: Option<&mut PgConnection>,
        entries: Vec<Entry>,
        hand: &HandOff,
    ) -> Result<(Vec<Applied>, Vec<Claimed>)> {
        let (applied, doomed, claimed) = self
            .apply_changes_once(operation, pool, conn, entries, hand)
            .await?;
        if doomed > 0
            && let Err(error) = self.settle(operation, pool, usize::MAX).await
        {
            // The changes are stored (and tasks may be claimed for the caller, which must
            // reach it, else nothing would run them until their leases expire): the caller
            // hears of them. The tasks marked to end are ended by the next sweep
            // (`settle_dependents`).
            tracing::warn!(%error, "ending the tasks a parent's failure ends failed; the next sweep ends them");
        }
        Ok((applied, claimed))
    }

    /// Runs [`APPLY_CHANGES`] on `conn`, or else on `pool` (again while it asks to be);
    /// answers in input order, how many waiting tasks are marked to end, and the released
    /// tasks claimed as `hand` allows.
    async fn apply_changes_once(
        &self,
        operation: &'static str,
        pool: &PgPool,
        mut conn: Option<&mut PgConnection>,
        entries: Vec<Entry>,
        hand: &HandOff,
    ) -> Result<(Vec<Applied>, i64, Vec<Claimed>)> {
        let n = entries.len();
        if n == 0 {
            return Ok((Vec::new(), 0, Vec::new()));
        }
        let mut ids = Vec::with_capacity(n);
        let mut from = Vec::with_capacity(n);
        let mut tokens = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut expired = Vec::with_capacity(n);
        let mut doomed = Vec::with_capacity(n);
        let mut not_due = Vec::with_capacity(n);
        let mut to = Vec::with_capacity(n);
        let mut steps = Vec::with_capacity(n);
        let mut run_in = Vec::with_capacity(n);
        let mut finished = Vec::with_capacity(n);
        let mut results = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        let mut events = Vec::with_capacity(n);
        let mut may_requeue = false;
        for entry in entries {
            let change = entry.change;
            if change.lease.is_some()
                || change.attempt == rules::AttemptChange::Begin
                || change.run_at == rules::RunAt::NotBeforeNow
            {
                return Err(Error::backend(
                    operation,
                    format!("this change cannot be applied here: {change:?}"),
                ));
            }
            may_requeue |= change.to == TaskStatus::Queued;
            ids.push(entry.id.0);
            from.push(change.from.as_str());
            tokens.push(entry.token.map(|token| token.0));
            attempts.push(entry.attempt.map(|a| i32::try_from(a).unwrap_or(i32::MAX)));
            expired.push(entry.expired);
            doomed.push(entry.doomed);
            not_due.push(entry.not_due);
            to.push(change.to.as_str());
            steps.push(change.attempt.step());
            run_in.push(change.run_at.delay().map(db_micros));
            finished.push(change.to.is_terminal());
            results.push(change.result.map(storable_json));
            errors.push(change.error.map(storable));
            let drafts: Vec<Value> = change
                .events
                .into_iter()
                .map(|draft| serde_json::json!({"kind": draft.kind.as_str(), "data": draft.data}))
                .collect();
            events.push(storable_json(Value::Array(drafts)));
        }
        let hint = self.finish_hint(may_requeue);
        let released_payload = self.notify_payload(true);
        let mut reruns = 0;
        let rows = loop {
            let query = sqlx::query(APPLY_CHANGES.sql())
                .bind(&ids)
                .bind(&from)
                .bind(&tokens)
                .bind(&attempts)
                .bind(&expired)
                .bind(&to)
                .bind(&steps)
                .bind(&run_in)
                .bind(&finished)
                .bind(&results)
                .bind(&errors)
                .bind(&events)
                .bind(&hint)
                .bind(&released_payload)
                .bind(&doomed)
                .bind(&not_due)
                .bind(&hand.engines)
                .bind(&hand.limits)
                .bind(hand.lease_us);
            let attempt = match conn.as_deref_mut() {
                Some(conn) => query.fetch_all(conn).await,
                None => query.fetch_all(pool).await,
            };
            match attempt {
                Ok(rows) => break rows,
                Err(error) if asks_to_rerun(&error) && reruns < RERUNS => {
                    reruns += 1;
                    tokio::time::sleep(rerun_pause(reruns)).await;
                }
                Err(error) => return Err(db_err(operation)(error)),
            }
        };
        let get = |e: sqlx::Error| corrupt(operation, e);
        let mut handed = Vec::new();
        let mut graph = Vec::new();
        for row in &rows[n.min(rows.len())..] {
            let is_handed: bool = row.try_get("handed").map_err(get)?;
            let (task, token) = task_from_row(operation, row)?;
            let lease_token = token
                .filter(|_| is_handed)
                .ok_or_else(|| corrupt(operation, "a handed task without a lease"))?;
            let dependents: i32 = row.try_get("dependents").map_err(get)?;
            if dependents > 0 || task.workflow_id.is_some() {
                graph.push(task.id.0);
            }
            handed.push(Claimed { task, lease_token });
        }
        if rows.len() != n + handed.len() {
            return Err(Error::backend(
                operation,
                format!("{} answers for {n} changes", rows.len()),
            ));
        }
        if !graph.is_empty() {
            self.remember_graph_claims(graph);
        }
        let mut out = Vec::with_capacity(n);
        let (mut requeued, mut changed) = (false, false);
        let (mut released, mut marked) = (0i64, 0i64);
        for row in &rows[..n] {
            released = row.try_get("released").map_err(get)?;
            marked = row.try_get("doomed").map_err(get)?;
            let id: Option<Uuid> = row.try_get("id").map_err(get)?;
            if id.is_some() {
                changed = true;
                if hand.statuses_only {
                    let status: String = row.try_get("status").map_err(get)?;
                    let status =
                        TaskStatus::from_str(&status).map_err(|e| corrupt(operation, e))?;
                    requeued |= status == TaskStatus::Queued;
                    out.push(Applied::Status(status));
                } else {
                    let (task, _) = task_from_row(operation, row)?;
                    requeued |= task.status == TaskStatus::Queued;
                    out.push(Applied::Changed(Box::new(task)));
                }
            } else {
                let exists: bool = row.try_get("found").map_err(get)?;
                out.push(Applied::Refused { exists });
            }
        }
        if changed {
            if released == 0 {
                self.deferred(&hint);
            }
            self.wake_events();
        }
        if requeued || released > 0 {
            self.claim_floors.clear();
            self.wake_tasks();
        }
        Ok((out, marked, handed))
    }

    /// Ends up to `limit` waiting tasks marked to end by a parent's failure, each by
    /// [`rules::dependency_failed`] in ascending id order, a level at a time (ending them may
    /// mark their own children) until none is left; returns how many it ended.
    pub(super) async fn settle(
        &self,
        operation: &'static str,
        pool: &PgPool,
        limit: usize,
    ) -> Result<u64> {
        static MARKED: Rendered = Rendered::new(
            "SELECT id, doom FROM orch_tasks WHERE doom IS NOT NULL AND status = {waiting} \
             ORDER BY id LIMIT $1",
        );
        /// Most marked tasks ended by one statement.
        const BATCH: usize = 1_000;
        let mut ended = 0u64;
        while (ended as usize) < limit {
            let want = (limit - ended as usize).min(BATCH);
            let rows = sqlx::query(MARKED.sql())
                .bind(i64::try_from(want).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await
                .map_err(db_err(operation))?;
            if rows.is_empty() {
                break;
            }
            let mut entries = Vec::with_capacity(rows.len());
            for row in &rows {
                let get = |e: sqlx::Error| corrupt(operation, e);
                let id: Uuid = row.try_get("id").map_err(get)?;
                let doom: Value = row.try_get("doom").map_err(get)?;
                let field = |name: &str| {
                    doom.get(name)
                        .and_then(Value::as_str)
                        .ok_or_else(|| corrupt(operation, format!("doom without {name}")))
                };
                let parent = TaskId(
                    field("parent")?
                        .parse()
                        .map_err(|e: uuid::Error| corrupt(operation, e))?,
                );
                let status: TaskStatus = field("status")?
                    .parse()
                    .map_err(|e| corrupt(operation, e))?;
                let to: TaskStatus = field("to")?.parse().map_err(|e| corrupt(operation, e))?;
                let mut entry =
                    Entry::on(TaskId(id), rules::dependency_failed(parent, status, to)?);
                entry.doomed = true;
                entries.push(entry);
            }
            let (applied, _, _) = self
                .apply_changes_once(operation, pool, None, entries, &HandOff::default())
                .await?;
            let changed = applied
                .iter()
                .filter(|applied| matches!(applied, Applied::Changed(_) | Applied::Status(_)))
                .count() as u64;
            if changed == 0 {
                // Each changed meanwhile (another process ended it): the next pass sees.
                break;
            }
            ended += changed;
        }
        Ok(ended)
    }

    /// One change by a rule that reads the task's state: read, decide, apply guarded by what
    /// was read, and again if the task changed in between.
    async fn transition(
        &self,
        operation: &'static str,
        id: TaskId,
        rule: impl Fn(TaskStatus) -> Result<rules::Change>,
    ) -> Result<Task> {
        self.transition_by_clock(operation, id, false, |status, _due| rule(status))
            .await
    }

    /// [`transition`](Self::transition) with a rule that also reads whether the task is due
    /// (`run_at` reached by the database clock, the one claims compare it with). With
    /// `not_due`, the change holds only while the task is still not due when it is applied:
    /// of two changes at once that made it due, the second reads it again and decides on that.
    async fn transition_by_clock(
        &self,
        operation: &'static str,
        id: TaskId,
        not_due: bool,
        rule: impl Fn(TaskStatus, bool) -> Result<rules::Change>,
    ) -> Result<Task> {
        for _ in 0..CHANGE_TRIES {
            let row = sqlx::query(
                "SELECT status, lease_token, attempt, run_at <= now() AS due \
                 FROM orch_tasks WHERE id = $1",
            )
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err(operation))?
            .ok_or(Error::TaskNotFound(id))?;
            let get = |e: sqlx::Error| corrupt(operation, e);
            let status: String = row.try_get("status").map_err(get)?;
            let status: TaskStatus = status.parse().map_err(|e| corrupt(operation, e))?;
            let token: Option<Uuid> = row.try_get("lease_token").map_err(get)?;
            let attempt: i32 = row.try_get("attempt").map_err(get)?;
            let due: bool = row.try_get("due").map_err(get)?;
            let entry = Entry {
                id,
                token: token.map(LeaseToken),
                attempt: u32::try_from(attempt).ok(),
                expired: false,
                doomed: false,
                not_due,
                change: rule(status, due)?,
            };
            match self
                .apply_changes(operation, &self.pool, vec![entry])
                .await?
                .pop()
            {
                Some(Applied::Changed(task)) => return Ok(*task),
                Some(Applied::Status(_)) => return Err(corrupt(operation, "a state, not a task")),
                Some(Applied::Refused { exists: false }) => return Err(Error::TaskNotFound(id)),
                // Changed since it was read: decide again on what it is now.
                Some(Applied::Refused { exists: true }) => continue,
                None => return Err(corrupt(operation, "no answer")),
            }
        }
        Err(Error::backend(
            operation,
            format!("task {id} kept changing; gave up after {CHANGE_TRIES} tries"),
        ))
    }

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
        let hint = self.event_hint();
        // A look for more urgent tasks always starts from the head.
        let (resume, clears) = match above {
            None => self.claim_floors.resume(engine),
            Some(_) => (None, 0),
        };
        // Timed from when the claim has its connection: a wait for the pool says nothing of
        // the index.
        let mut conn = self
            .worker_pool
            .acquire()
            .await
            .map_err(db_err(operation))?;
        let started = std::time::Instant::now();
        let query = match resume {
            Some(_) => sqlx::query(CLAIM_TASKS_AFTER.sql()),
            None => sqlx::query(CLAIM_TASKS.sql()),
        };
        let mut query = query
            .bind(engine)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(db_micros(lease))
            .bind(&hint)
            .bind(crate::common::priority_floor(above));
        if let Some((priority, run_at, id)) = resume {
            query = query.bind(priority).bind(run_at).bind(id);
        }
        let rows = query
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err(operation))?;
        let took = started.elapsed();
        drop(conn);
        if !rows.is_empty() {
            self.deferred(&hint);
        }
        let mut claimed = Vec::with_capacity(rows.len());
        let mut graph = Vec::new();
        for row in &rows {
            let (task, token) = task_from_row(operation, row)?;
            let lease_token =
                token.ok_or_else(|| corrupt(operation, "claimed task has no lease"))?;
            let dependents: i32 = row
                .try_get("dependents")
                .map_err(|e| corrupt(operation, e))?;
            if dependents > 0 || task.workflow_id.is_some() {
                graph.push(task.id.0);
            }
            claimed.push(Claimed { task, lease_token });
        }
        if !graph.is_empty() {
            self.remember_graph_claims(graph);
        }
        if above.is_none() {
            // Claimed in claim order: the last is where the next claim resumes.
            let last = claimed
                .last()
                .map(|c| (c.task.priority, c.task.run_at, c.task.id.0));
            match resume {
                Some(_) => self.claim_floors.after_resumed(engine, clears, last),
                None => self.claim_floors.after_head(engine, clears, took, last),
            }
        }
        if !claimed.is_empty() {
            self.wake_events();
        }
        Ok(claimed)
    }

    /// Remembers claimed tasks that had dependents or a workflow (see `graph_claims`); the
    /// set is emptied when it reaches [`GRAPH_CLAIMS_MAX`] (outcomes never reported, of
    /// attempts whose leases were lost, must not make it grow for good).
    fn remember_graph_claims(&self, ids: Vec<Uuid>) {
        let mut claims = self
            .graph_claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if claims.len() + ids.len() > GRAPH_CLAIMS_MAX {
            claims.clear();
        }
        claims.extend(ids);
    }

    /// Forgets the reports' tasks in `graph_claims`; whether any was there.
    fn forget_graph_claims(&self, reports: &[AttemptReport]) -> bool {
        let mut claims = self
            .graph_claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if claims.is_empty() {
            return false;
        }
        let mut any = false;
        for report in reports {
            any |= claims.remove(&report.task_id.0);
        }
        any
    }

    /// [`TaskStore::finish_attempts`] for successes of distinct tasks: one [`FINISH_SUCCESSES`]
    /// statement; the reports it did not finish (lease lost, task unknown) then go through
    /// [`APPLY_CHANGES`], which tells which.
    async fn finish_successes(
        &self,
        reports: Vec<AttemptReport>,
    ) -> Result<Vec<Result<TaskStatus>>> {
        const OP: &str = "finish_attempts";
        let n = reports.len();
        let mut ids = Vec::with_capacity(n);
        let mut tokens = Vec::with_capacity(n);
        let mut results = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        // In input order (the events' order). Another statement locking several of these
        // rows could deadlock with this one, but there is none: the renewals of these leases
        // skip rows that are locked, and other holders' batches never touch them.
        for report in &reports {
            ids.push(report.task_id.0);
            tokens.push(report.lease_token.0);
            attempts.push(i32::try_from(report.attempt).unwrap_or(i32::MAX));
            results.push(match &report.outcome {
                AttemptOutcome::Succeeded { result } => storable_json(result.clone()),
                _ => Value::Null.to_string(),
            });
        }
        let hint = self.finish_hint(false);
        let rows = sqlx::query(FINISH_SUCCESSES.sql())
            .bind(&ids)
            .bind(&tokens)
            .bind(&results)
            .bind(&hint)
            .bind(&attempts)
            .fetch_all(&self.worker_pool)
            .await
            .map_err(db_err(OP))?;
        let mut done = HashSet::with_capacity(rows.len());
        for row in &rows {
            let id: Uuid = row.try_get("id").map_err(|e| corrupt(OP, e))?;
            done.insert(id);
        }
        if !done.is_empty() {
            self.deferred(&hint);
            self.wake_events();
        }
        let succeeded = rules::end_attempt(
            1,
            AttemptOutcome::Succeeded {
                result: Value::Null,
            },
        )
        .to;
        let mut out: Vec<Result<TaskStatus>> = Vec::with_capacity(n);
        let mut left = Vec::new();
        for (index, report) in reports.into_iter().enumerate() {
            if done.contains(&report.task_id.0) {
                out.push(Ok(succeeded));
            } else {
                // Rare (a lost lease, an unknown task): the general path tells which.
                out.push(Err(Error::LeaseLost(report.task_id)));
                left.push((index, report));
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

    /// [`TaskStore::finish_attempts`] for outcomes of tasks that end others' waits: one
    /// statement at a time per backend, each taking every batch that arrived while the one
    /// before ran. Such batches lock the children they share (in one order, so they never
    /// deadlock, but each waits for the other's commit): running them one after another in
    /// bigger statements takes less time, and less of the database's, than letting them queue
    /// on row locks.
    async fn finish_in_graph(
        &self,
        reports: Vec<AttemptReport>,
        hand: &HandOff,
    ) -> Result<(Vec<Result<TaskStatus>>, Vec<Claimed>)> {
        let (sender, mut answer) = tokio::sync::oneshot::channel();
        let ours = {
            let mut queue = self.graph_outcomes.lock_queue();
            queue.last_number += 1;
            let number = queue.last_number;
            queue.jobs.push_back((number, reports, sender));
            number
        };
        // Gone before its turn (the caller dropped this call), the batch leaves the queue.
        let _leave = LeaveQueue {
            outcomes: &self.graph_outcomes,
            number: ours,
        };
        let mut turn = self.graph_outcomes.turn.lock().await;
        match answer.try_recv() {
            // Recorded by the statement of a caller whose turn came first.
            Ok(result) => return result.map(|statuses| (statuses, Vec::new())),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => return Err(interrupted()),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
        }
        // Ours is still queued: take the batches up to it (of callers waiting for the turn
        // behind this one) and those behind it, up to the cap.
        let mut jobs = Vec::new();
        {
            let mut queue = self.graph_outcomes.lock_queue();
            let mut taken = 0;
            let mut ours_taken = false;
            while let Some((number, batch, _)) = queue.jobs.front() {
                if ours_taken && taken + batch.len() > GRAPH_BATCH_MAX {
                    break;
                }
                ours_taken |= *number == ours;
                taken += batch.len();
                jobs.extend(queue.jobs.pop_front());
            }
        }
        let sizes: Vec<usize> = jobs.iter().map(|(_, batch, _)| batch.len()).collect();
        let mut senders = Vec::with_capacity(jobs.len());
        let mut all = Vec::with_capacity(sizes.iter().sum());
        for (number, batch, sender) in jobs {
            all.extend(batch);
            senders.push((number, sender));
        }
        let closed = || {
            self.graph_outcomes
                .closed
                .load(std::sync::atomic::Ordering::SeqCst)
        };
        // Out of the turn while the statement runs: should this call be dropped meanwhile, the
        // connection goes back to the pool (which checks it) rather than being kept.
        let mut conn = match turn.take() {
            Some(conn) => Some(conn),
            // None when the pool is busy: this turn runs on the pool.
            None if self.keeps_graph_connection && !closed() => self.worker_pool.try_acquire(),
            None => None,
        };
        let result = self
            .finish_batch_claiming(all, conn.as_deref_mut(), hand)
            .await;
        match conn {
            Some(conn) if result.is_ok() && !closed() => *turn = Some(conn),
            // Maybe broken: closed rather than kept or given back.
            Some(conn) if result.is_err() => {
                let _ = conn.close().await;
            }
            // The backend is closing: back to the pool, which closes it.
            _ => {}
        }
        let claimed = match result {
            Ok((answers, claimed)) => {
                let mut answers = answers.into_iter();
                for (size, (_, sender)) in sizes.into_iter().zip(senders) {
                    let _ = sender.send(Ok(answers.by_ref().take(size).collect()));
                }
                claimed
            }
            Err(error) => {
                // The others get a copy; this caller its own error, with its cause.
                for (number, sender) in senders {
                    if number != ours {
                        let _ = sender.send(Err(copy_error(&error)));
                    }
                }
                return Err(error);
            }
        };
        let statuses = answer.try_recv().unwrap_or_else(|_| Err(interrupted()))?;
        Ok((statuses, claimed))
    }

    /// [`TaskStore::finish_attempts`] in general: each report's [`rules::end_attempt`]
    /// through [`APPLY_CHANGES`].
    async fn finish_batch(&self, reports: Vec<AttemptReport>) -> Result<Vec<Result<TaskStatus>>> {
        Ok(self
            .finish_batch_claiming(reports, None, &HandOff::statuses_only())
            .await?
            .0)
    }

    /// [`finish_batch`](Self::finish_batch) that claims, in the same statement, released
    /// tasks as `hand` allows.
    async fn finish_batch_claiming(
        &self,
        reports: Vec<AttemptReport>,
        conn: Option<&mut PgConnection>,
        hand: &HandOff,
    ) -> Result<(Vec<Result<TaskStatus>>, Vec<Claimed>)> {
        let ids: Vec<TaskId> = reports.iter().map(|report| report.task_id).collect();
        let entries = reports
            .into_iter()
            .map(|report| Entry {
                id: report.task_id,
                token: Some(report.lease_token),
                attempt: Some(report.attempt),
                expired: false,
                doomed: false,
                not_due: false,
                change: rules::end_attempt(report.attempt, report.outcome),
            })
            .collect();
        let (applied, claimed) = self
            .apply_changes_claiming("finish_attempts", &self.worker_pool, conn, entries, hand)
            .await?;
        let statuses = ids
            .into_iter()
            .zip(applied)
            .map(|(id, applied)| match applied {
                Applied::Changed(task) => Ok(task.status),
                Applied::Status(status) => Ok(status),
                Applied::Refused { exists: true } => Err(Error::LeaseLost(id)),
                Applied::Refused { exists: false } => Err(Error::TaskNotFound(id)),
            })
            .collect();
        Ok((statuses, claimed))
    }

    /// [`TaskStore::finish_attempts`], claiming released tasks as `hand` allows.
    async fn finish_claiming(
        &self,
        reports: Vec<AttemptReport>,
        hand: &HandOff,
    ) -> Result<(Vec<Result<TaskStatus>>, Vec<Claimed>)> {
        if reports.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut ids = HashSet::with_capacity(reports.len());
        let simple = reports.iter().all(|report| {
            matches!(report.outcome, AttemptOutcome::Succeeded { .. }) && ids.insert(report.task_id)
        });
        // Forgotten whichever way the outcome goes; one of a task that ends others' waits
        // skips the statement for plain successes, which would refuse the batch.
        let in_graph = self.forget_graph_claims(&reports);
        if in_graph {
            self.finish_in_graph(reports, hand).await
        } else if simple {
            // Releases nothing: no task of the batch has dependents.
            Ok((self.finish_successes(reports).await?, Vec::new()))
        } else {
            self.finish_batch_claiming(reports, None, hand).await
        }
    }
}

/// Released tasks an outcome's statement may claim at once for its caller (`APPLY_CHANGES`'s
/// `$17` to `$19`): none by default; and whether the caller needs only the changed tasks'
/// states ([`Applied::Status`]), not the whole tasks.
#[derive(Debug, Default)]
pub(super) struct HandOff {
    engines: Vec<String>,
    limits: Vec<i32>,
    lease_us: i64,
    statuses_only: bool,
}

impl HandOff {
    fn new(room: Vec<EngineRoom>, lease: Duration) -> Self {
        let (engines, limits) = room
            .into_iter()
            .filter(|room| room.limit > 0)
            .map(|room| (room.engine, i32::try_from(room.limit).unwrap_or(i32::MAX)))
            .unzip();
        HandOff {
            engines,
            limits,
            lease_us: db_micros(lease),
            statuses_only: true,
        }
    }

    /// No task claimed; the changed tasks' states only.
    fn statuses_only() -> Self {
        HandOff {
            statuses_only: true,
            ..HandOff::default()
        }
    }
}

#[async_trait]
impl TaskStore for PostgresBackend {
    async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<Created>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.acquire().await.map_err(db_err("create_tasks"))?;
        if tasks.iter().any(|task| !task.dependencies.is_empty()) {
            let payload = self.notify_payload(true);
            let graph = self
                .insert_graph(&mut conn, tasks, None, true, payload)
                .await?;
            drop(conn);
            return self.after_graph(graph).await.map(|(created, _)| created);
        }
        let (out, stored) = insert_tasks(&mut conn, tasks, self.notify_payload(true)).await?;
        if stored {
            self.claim_floors.created(&out);
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
        let id = workflow.id;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db_err("create_workflow"))?;
        let payload = self.notify_payload(true);
        let graph = self
            .insert_graph(&mut conn, tasks, Some(workflow), true, payload)
            .await?;
        drop(conn);
        let (tasks, workflow) = self.after_graph(graph).await?;
        let (workflow, created) = workflow.ok_or(Error::WorkflowNotFound(id))?;
        Ok(CreatedWorkflow {
            workflow,
            created,
            tasks,
        })
    }

    async fn get_workflow(&self, id: WorkflowId) -> Result<Option<WorkflowInfo>> {
        const OP: &str = "get_workflow";
        let mut conn = self.pool.acquire().await.map_err(db_err(OP))?;
        self.workflow_info_on(&mut conn, OP, id).await
    }

    async fn workflow_tasks(&self, id: WorkflowId) -> Result<Vec<WorkflowTask>> {
        self.workflow_graph(id).await
    }

    async fn list_parents(
        &self,
        child: TaskId,
        from: u32,
        limit: usize,
    ) -> Result<Vec<ParentTask>> {
        self.parents_of(child, from, limit).await
    }

    async fn cancel_workflow(&self, id: WorkflowId) -> Result<WorkflowInfo> {
        self.cancel_flow(id).await
    }

    async fn retry_workflow(&self, id: WorkflowId) -> Result<WorkflowInfo> {
        self.retry_flow(id).await
    }

    async fn settle_dependents(&self, limit: usize) -> Result<u64> {
        self.settle("settle_dependents", &self.worker_pool, limit)
            .await
    }

    fn creates_claimed(&self) -> bool {
        true
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
        let row = sqlx::query(CREATE_CLAIMED.sql())
            .bind(task.id.0)
            .bind(task.engine.as_str())
            .bind(task.priority)
            .bind(micros(task.timeout))
            .bind(i32::try_from(task.max_attempts).unwrap_or(i32::MAX))
            .bind(task.not_before)
            .bind(task.payload.to_string())
            .bind(task.metadata.to_string())
            .bind(&task.locks)
            .bind(db_micros(lease))
            .bind(&hint)
            .bind(task.traceparent.as_deref())
            .bind(task.tracestate.as_deref())
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

    async fn task_by_idempotency_key(&self, key: &str) -> Result<Option<Task>> {
        const OP: &str = "task_by_idempotency_key";
        let row = sqlx::query("SELECT * FROM orch_tasks WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
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
                    "SELECT * FROM orch_tasks WHERE ($1::text IS NULL OR status = $1) \
                     AND ($2::text IS NULL OR core_id = $2) AND ($3::uuid IS NULL OR id ",
                    $after,
                    " $3) AND ($5::bool IS NULL OR (status = {queued} AND (run_at <= now()) = $5)) \
                     ORDER BY id",
                    $order,
                    " LIMIT $4"
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
            .fetch_all(&self.pool)
            .await
            .map_err(db_err(OP))?;
        tasks_from_rows(OP, &rows)
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
        static NEXT_RUN_AT: Rendered = Rendered::new(
            "SELECT min(run_at) FROM orch_tasks WHERE status = {queued} AND core_id = $1",
        );
        let next: Option<DateTime<Utc>> = sqlx::query_scalar(NEXT_RUN_AT.sql())
            .bind(engine)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err("next_run_at"))?;
        // A task due now that a claim just did not find, while the engine's claims resume, is
        // one a resumed claim cannot see: it waits for the next claim from the head (asking
        // sooner would only repeat the empty claim).
        if let Some(at) = next
            && at <= Utc::now()
            && let Some(due) = self.claim_floors.head_due(engine)
        {
            let wait = due.saturating_duration_since(std::time::Instant::now());
            let head = chrono::Duration::from_std(wait)
                .ok()
                .and_then(|wait| Utc::now().checked_add_signed(wait));
            return Ok(head.or(next));
        }
        Ok(next)
    }

    async fn renew_leases(
        &self,
        leases: Vec<HeldLease>,
        lease: Duration,
    ) -> Result<Vec<Option<DateTime<Utc>>>> {
        const OP: &str = "renew_leases";
        // A renewal never waits for a row: one locked by a statement under way (an outcome
        // being recorded, a cancel) is skipped this time and reported with the expiry it
        // still has, so renewals cannot deadlock with outcome batches, which lock rows in
        // their own order. The lease keeper renews again well before that expiry.
        static RENEW: Rendered = Rendered::new(
            "WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[]) AS u(id, token)
), picked AS (
    -- One primary-key probe per lease (LATERAL), as the outcome statements do.
    SELECT t.id FROM input CROSS JOIN LATERAL (
        SELECT id FROM orch_tasks
        WHERE id = input.id AND lease_token = input.token AND status = {running}
        FOR UPDATE SKIP LOCKED
    ) AS t
), renewed AS (
    UPDATE orch_tasks t SET lease_expires_at = now() + $3::int8 * interval '1 microsecond'
    FROM picked WHERE t.id = picked.id
    RETURNING t.id, t.lease_token, t.lease_expires_at
)
SELECT id, lease_token, lease_expires_at FROM renewed
UNION ALL
SELECT id, lease_token, lease_expires_at FROM orch_tasks
WHERE id = ANY($1::uuid[]) AND status = {running} AND id NOT IN (SELECT id FROM renewed)",
        );
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = leases.iter().map(|held| held.task_id.0).collect();
        let tokens: Vec<Uuid> = leases.iter().map(|held| held.lease_token.0).collect();
        let rows = sqlx::query(RENEW.sql())
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
            .map(|held| renewed.get(&(held.task_id.0, held.lease_token.0)).copied())
            .collect())
    }

    async fn finish_attempts(
        &self,
        reports: Vec<AttemptReport>,
    ) -> Result<Vec<Result<TaskStatus>>> {
        Ok(self
            .finish_claiming(reports, &HandOff::statuses_only())
            .await?
            .0)
    }

    fn claims_released_tasks(&self) -> bool {
        true
    }

    async fn finish_attempts_and_claim(
        &self,
        reports: Vec<AttemptReport>,
        room: Vec<EngineRoom>,
        lease: Duration,
    ) -> Result<(Vec<Result<TaskStatus>>, Vec<Claimed>)> {
        self.finish_claiming(reports, &HandOff::new(room, lease))
            .await
    }

    async fn cancel_task(&self, id: TaskId) -> Result<Task> {
        self.transition("cancel_task", id, |status| rules::cancel(id, status))
            .await
    }

    async fn cancel_task_by(&self, id: TaskId, actor: &str) -> Result<Task> {
        self.transition("cancel_task", id, |status| {
            rules::cancel_by(id, status, actor)
        })
        .await
    }

    async fn delete_task(&self, id: TaskId) -> Result<Task> {
        const OP: &str = "delete_task";
        static DEPENDED_ON: Rendered =
            Rendered::new("SELECT EXISTS (SELECT 1 FROM orch_task_deps WHERE parent_id = $1)");
        let mut tx = self.pool.begin().await.map_err(db_err(OP))?;
        // Locked: a change racing the deletion waits for it (and then finds no task).
        let row = sqlx::query("SELECT * FROM orch_tasks WHERE id = $1 FOR UPDATE")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err(OP))?
            .ok_or(Error::TaskNotFound(id))?;
        let (task, _) = task_from_row(OP, &row)?;
        let waited_for: bool = sqlx::query_scalar(DEPENDED_ON.sql())
            .bind(id.0)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        if let Some(refused) = rules::deletion_refused(&task, waited_for) {
            return Err(refused);
        }
        sqlx::query("DELETE FROM orch_tasks WHERE id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        sqlx::query("DELETE FROM orch_task_deps WHERE child_id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        tx.commit().await.map_err(db_err(OP))?;
        Ok(task)
    }

    async fn retry_task(&self, id: TaskId, actor: &str) -> Result<Task> {
        const OP: &str = "retry_task";
        // A task's workflow and dependencies never change once stored (it may gain
        // dependents, which this read then sees): read once, before the change.
        let row = sqlx::query(
            "SELECT workflow_id, dependents > 0 \
                 OR EXISTS (SELECT 1 FROM orch_task_deps WHERE child_id = $1) AS in_graph \
             FROM orch_tasks WHERE id = $1",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err(OP))?
        .ok_or(Error::TaskNotFound(id))?;
        let workflow: Option<Uuid> = row.try_get("workflow_id").map_err(|e| corrupt(OP, e))?;
        let in_graph: bool = row.try_get("in_graph").map_err(|e| corrupt(OP, e))?;
        if let Some(workflow) = workflow {
            return Err(rules::retry_refused_in_workflow(id, WorkflowId(workflow)));
        }
        if in_graph {
            return Err(rules::retry_refused_in_graph(id));
        }
        self.transition(OP, id, |status| rules::retry(id, status, actor))
            .await
    }

    async fn requeue_task(&self, id: TaskId, actor: &str) -> Result<Task> {
        // Of requeues at once, one applies; the others read the task again, due, and are
        // refused.
        self.transition_by_clock("requeue_task", id, true, |status, due| {
            rules::requeue(id, status, due, actor)
        })
        .await
    }

    async fn resolve_task(&self, id: TaskId, resolution: Resolution) -> Result<Task> {
        self.transition("resolve_task", id, |status| {
            rules::resolve(id, status, resolution.clone())
        })
        .await
    }

    async fn rescue_expired(&self, limit: usize) -> Result<Vec<Task>> {
        const OP: &str = "rescue_expired";
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(EXPIRED_LEASES.sql())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.worker_pool)
            .await
            .map_err(db_err(OP))?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            let get = |e: sqlx::Error| corrupt(OP, e);
            let attempt: i32 = row.try_get("attempt").map_err(get)?;
            let max_attempts: i32 = row.try_get("max_attempts").map_err(get)?;
            let attempt = u32::try_from(attempt).map_err(|_| corrupt(OP, "attempt"))?;
            let max_attempts =
                u32::try_from(max_attempts).map_err(|_| corrupt(OP, "max_attempts"))?;
            let token: Uuid = row.try_get("lease_token").map_err(get)?;
            entries.push(Entry {
                id: TaskId(row.try_get("id").map_err(get)?),
                token: Some(LeaseToken(token)),
                attempt: Some(attempt),
                expired: true,
                doomed: false,
                not_due: false,
                change: rules::rescue(attempt, max_attempts),
            });
        }
        // A lease renewed (or a task finished) since it was read is left alone.
        Ok(self
            .apply_changes(OP, &self.worker_pool, entries)
            .await?
            .into_iter()
            .filter_map(|applied| match applied {
                Applied::Changed(task) => Some(*task),
                // (States only are not asked for here.)
                Applied::Refused { .. } | Applied::Status(_) => None,
            })
            .collect())
    }

    async fn prune_tasks(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        self.prune(before, limit).await
    }

    async fn queue_depth(&self) -> Result<Vec<QueueDepth>> {
        const OP: &str = "queue_depth";
        static DEPTH: Rendered = Rendered::new(
            "SELECT core_id, priority, count(*) AS n FROM orch_tasks WHERE status = {queued} \
             GROUP BY core_id, priority ORDER BY core_id, priority",
        );
        let rows = sqlx::query(DEPTH.sql())
            .fetch_all(&self.pool)
            .await
            .map_err(db_err(OP))?;
        rows.iter()
            .map(|row| {
                let get = |e: sqlx::Error| corrupt(OP, e);
                Ok(QueueDepth {
                    engine: row.try_get("core_id").map_err(get)?,
                    priority: row.try_get("priority").map_err(get)?,
                    queued: count(row.try_get("n").map_err(get)?),
                })
            })
            .collect()
    }

    async fn count_tasks(&self) -> Result<Vec<EngineCounts>> {
        const OP: &str = "count_tasks";
        let rows = sqlx::query(
            "SELECT core_id, status, run_at > now() AS delayed, count(*) AS n FROM orch_tasks \
             GROUP BY core_id, status, delayed ORDER BY core_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err(OP))?;
        counts_from_rows(OP, &rows)
    }

    fn task_wakeups(&self) -> Option<ChangeSignal> {
        Some(self.task_wakeups.clone())
    }
}

/// Rows of `(core_id, status, delayed, n)`, ordered by engine, as counts per engine.
fn counts_from_rows(operation: &'static str, rows: &[PgRow]) -> Result<Vec<EngineCounts>> {
    let mut out: Vec<EngineCounts> = Vec::new();
    for row in rows {
        let get = |e: sqlx::Error| corrupt(operation, e);
        let engine: String = row.try_get("core_id").map_err(get)?;
        let status: String = row.try_get("status").map_err(get)?;
        let status: TaskStatus = status.parse().map_err(|e| corrupt(operation, e))?;
        let delayed: bool = row.try_get("delayed").map_err(get)?;
        if out.last().is_none_or(|last| last.engine != engine) {
            out.push(EngineCounts::new(engine));
        }
        if let Some(counts) = out.last_mut() {
            counts.add(status, delayed, count(row.try_get("n").map_err(get)?));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::statements::*;

    /// Every statement written with rule placeholders renders (a rule whose shape they cannot
    /// follow, or a misspelt placeholder, fails here).
    #[test]
    fn every_statement_follows_the_rules() {
        for statement in [
            &CREATE_TASKS,
            &CREATE_TASKS_UNKEYED,
            &CREATE_TASK,
            &CREATE_CLAIMED,
            &CLAIM_TASKS,
            &CLAIM_TASKS_AFTER,
            &EXPIRED_LEASES,
            &FINISH_SUCCESSES,
        ] {
            let sql = statement.sql();
            assert!(
                !sql.contains("{claim") && !sql.contains("{created"),
                "{sql}"
            );
        }
    }
}
