//! Dependencies and workflows on SQLite, inside the write transaction of the step that needs
//! them: storing a graph, applying what finished tasks mean for the tasks waiting for them
//! (level by level, before the step commits), and a workflow's counts, cancel, retry and
//! pruning. The single writer serialises every step, so counts read here are current.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use orch_core::backend::rules::{self, DependencyEnd as Doom, dependency_counts as counts};
use orch_core::backend::{NewDependency, NewTask, NewWorkflow};
use orch_core::{
    Created, Error, NewEvent, OnParentFailure, ParentTask, Result, Task, TaskId, TaskStatus,
    WorkflowId, WorkflowInfo, WorkflowStatus, WorkflowTask,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use super::tasks::{apply, load, save};
use super::{json_to_db, task_from_row, time_from_db, time_to_db};
use crate::common::{corrupt, db_err, micros, to_u32, truncate_micros};
use crate::rule_sql::render;

/// What storing a graph did.
pub(super) struct StoredGraph {
    /// One per input task.
    pub(super) created: Vec<Created>,
    pub(super) workflow: Option<(WorkflowInfo, bool)>,
    /// The events, in order, to append with the step.
    pub(super) events: Vec<NewEvent>,
    /// Whether a task became claimable.
    pub(super) queued: bool,
}

/// A JSON array of ids, as `SELECT unhex(value) FROM json_each(?)` reads them.
pub(super) fn ids_json(ids: impl IntoIterator<Item = TaskId>) -> String {
    let hex: Vec<String> = ids
        .into_iter()
        .map(|id| id.0.simple().to_string())
        .collect();
    serde_json::Value::from(hex).to_string()
}

fn status_of(operation: &'static str, text: &str) -> Result<TaskStatus> {
    TaskStatus::from_str(text).map_err(|e| corrupt(operation, e))
}

fn workflow_from_row(operation: &'static str, row: &SqliteRow) -> Result<WorkflowInfo> {
    let get = |e: sqlx::Error| corrupt(operation, e);
    let status: String = row.try_get("status").map_err(get)?;
    let finished_at: Option<i64> = row.try_get("finished_at").map_err(get)?;
    Ok(WorkflowInfo {
        id: WorkflowId(row.try_get("id").map_err(get)?),
        status: WorkflowStatus::from_str(&status).map_err(|e| corrupt(operation, e))?,
        idempotency_key: row.try_get("idempotency_key").map_err(get)?,
        tasks: to_u32(operation, "tasks", row.try_get("tasks").map_err(get)?)?,
        unfinished: to_u32(
            operation,
            "unfinished",
            row.try_get("unfinished").map_err(get)?,
        )?,
        succeeded: to_u32(
            operation,
            "succeeded",
            row.try_get("succeeded").map_err(get)?,
        )?,
        created_at: time_from_db(operation, row.try_get("created_at").map_err(get)?)?,
        finished_at: finished_at
            .map(|at| time_from_db(operation, at))
            .transpose()?,
    })
}

/// The workflow, if it exists.
pub(super) async fn get_workflow(
    conn: &mut SqliteConnection,
    operation: &'static str,
    id: WorkflowId,
) -> Result<Option<WorkflowInfo>> {
    let row = sqlx::query("SELECT * FROM orch_workflows WHERE id = ?")
        .bind(id.0)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err(operation))?;
    row.map(|row| workflow_from_row(operation, &row))
        .transpose()
}

/// The workflow's tasks in step order.
async fn members(
    conn: &mut SqliteConnection,
    operation: &'static str,
    id: WorkflowId,
) -> Result<Vec<(usize, Task)>> {
    let rows = sqlx::query("SELECT * FROM orch_tasks WHERE workflow_id = ? ORDER BY workflow_step")
        .bind(id.0)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(operation))?;
    rows.iter()
        .map(|row| {
            let step: i64 = row
                .try_get("workflow_step")
                .map_err(|e| corrupt(operation, e))?;
            let (task, _) = task_from_row(operation, row)?;
            Ok((usize::try_from(step).unwrap_or_default(), task))
        })
        .collect()
}

/// The workflow's tasks with their dependencies, in step order.
pub(super) async fn workflow_tasks(
    conn: &mut SqliteConnection,
    id: WorkflowId,
) -> Result<Vec<WorkflowTask>> {
    const OP: &str = "workflow_tasks";
    let tasks = members(conn, OP, id).await?;
    let edges = sqlx::query_as(
        "SELECT d.child_id, d.parent_id, d.on_failure FROM orch_task_deps d \
         JOIN orch_tasks t ON t.id = d.child_id WHERE t.workflow_id = ? \
         ORDER BY d.child_id, d.position",
    )
    .bind(id.0)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err(OP))?;
    crate::common::workflow_tasks_of(OP, tasks, edges)
}

/// Up to `limit` parents of `child` from position `from`.
pub(super) async fn list_parents(
    conn: &mut SqliteConnection,
    child: TaskId,
    from: u32,
    limit: usize,
) -> Result<Vec<ParentTask>> {
    const OP: &str = "list_parents";
    let rows = sqlx::query(
        "SELECT d.position AS dep_position, d.parent_id AS dep_parent, \
         d.on_failure AS dep_on_failure, p.* FROM orch_task_deps d \
         LEFT JOIN orch_tasks p ON p.id = d.parent_id \
         WHERE d.child_id = ? AND d.position >= ? ORDER BY d.position LIMIT ?",
    )
    .bind(child.0)
    .bind(i64::from(from))
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err(OP))?;
    rows.iter()
        .map(|row| {
            let get = |e: sqlx::Error| corrupt(OP, e);
            let on_failure: String = row.try_get("dep_on_failure").map_err(get)?;
            let exists: Option<Uuid> = row.try_get("id").map_err(get)?;
            Ok(ParentTask {
                position: to_u32(OP, "position", row.try_get("dep_position").map_err(get)?)?,
                task_id: TaskId(row.try_get("dep_parent").map_err(get)?),
                on_failure: OnParentFailure::from_str(&on_failure).map_err(|e| corrupt(OP, e))?,
                task: match exists {
                    Some(_) => Some(task_from_row(OP, row)?.0),
                    None => None,
                },
            })
        })
        .collect()
}

/// Most task rows per multi-row insert (18 parameters each, under SQLite's 32,766).
const GRAPH_TASKS_PER_INSERT: usize = 500;

/// Most dependency rows per multi-row insert (4 parameters each).
const DEPENDENCIES_PER_INSERT: usize = 2_000;

/// Inserts new task rows in their state, with their dependency counts and workflow.
async fn insert_graph_rows(
    conn: &mut SqliteConnection,
    rows: &[(Task, u32, Option<usize>)],
) -> Result<()> {
    const OP: &str = "create_tasks";
    for chunk in rows.chunks(GRAPH_TASKS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, \
             attempt, run_at, created_at, updated_at, payload, metadata, idempotency_key, \
             locks, waiting_for, dependents, workflow_id, workflow_step, traceparent, \
             tracestate) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str("(?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
        }
        // Built only from the fixed fragments above: nothing from the caller is spliced in.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (task, dependents, step) in chunk {
            query = query
                .bind(task.id.0)
                .bind(task.engine.clone())
                .bind(task.status.as_str())
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
                .bind(i64::from(task.waiting_for))
                .bind(i64::from(*dependents))
                .bind(task.workflow_id.map(|w| w.0))
                .bind(step.map(|s| i64::try_from(s).unwrap_or(i64::MAX)))
                .bind(task.traceparent.clone())
                .bind(task.tracestate.clone());
        }
        query.execute(&mut *conn).await.map_err(db_err(OP))?;
    }
    Ok(())
}

/// Inserts dependency rows `(child, position, parent, on_failure)`.
async fn insert_dependencies(
    conn: &mut SqliteConnection,
    rows: &[(TaskId, u32, NewDependency)],
) -> Result<()> {
    const OP: &str = "create_tasks";
    for chunk in rows.chunks(DEPENDENCIES_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO orch_task_deps (child_id, position, parent_id, on_failure) VALUES ",
        );
        for i in 0..chunk.len() {
            sql.push_str(if i == 0 {
                "(?, ?, ?, ?)"
            } else {
                ", (?, ?, ?, ?)"
            });
        }
        // Built only from the fixed fragments above: nothing from the caller is spliced in.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (child, position, dependency) in chunk {
            query = query
                .bind(child.0)
                .bind(i64::from(*position))
                .bind(dependency.parent.0)
                .bind(dependency.on_failure.as_str());
        }
        query.execute(&mut *conn).await.map_err(db_err(OP))?;
    }
    Ok(())
}

/// Stores `tasks` (with dependencies, or of `workflow`) in the caller's write transaction;
/// see [`TaskStore::create_tasks`](orch_core::backend::TaskStore::create_tasks). The caller
/// appends the events and commits.
pub(super) async fn insert_graph(
    conn: &mut SqliteConnection,
    tasks: Vec<NewTask>,
    workflow: Option<NewWorkflow>,
    now: DateTime<Utc>,
) -> Result<StoredGraph> {
    const OP: &str = "create_tasks";
    if let Some(key) = workflow.as_ref().and_then(|w| w.idempotency_key.as_ref()) {
        let earlier: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM orch_workflows WHERE idempotency_key = ?")
                .bind(key)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_err(OP))?;
        if let Some(earlier) = earlier {
            let earlier = WorkflowId(earlier);
            let info = get_workflow(conn, OP, earlier)
                .await?
                .ok_or_else(|| corrupt(OP, "a workflow vanished"))?;
            let created = members(conn, OP, earlier)
                .await?
                .into_iter()
                .map(|(_, task)| Created {
                    task,
                    created: false,
                })
                .collect();
            return Ok(StoredGraph {
                created,
                workflow: Some((info, false)),
                events: Vec::new(),
                queued: false,
            });
        }
    }
    // Tasks whose key is taken: the holder of the key stands in for them.
    let mut stand_in: HashMap<TaskId, Task> = HashMap::new();
    let mut batch_keys: HashMap<String, TaskId> = HashMap::new();
    for task in &tasks {
        let Some(key) = &task.idempotency_key else {
            continue;
        };
        let existing = sqlx::query("SELECT * FROM orch_tasks WHERE idempotency_key = ?")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err(OP))?;
        if let Some(row) = existing {
            stand_in.insert(task.id, task_from_row(OP, &row)?.0);
        } else if batch_keys.insert(key.clone(), task.id).is_some() {
            // `plan_tasks` refuses a graph whose tasks share a key.
            return Err(Error::invalid(
                "idempotency_key",
                format!("two tasks of one graph share the key {key:?}"),
            ));
        }
    }
    let resolve = |id: TaskId| stand_in.get(&id).map_or(id, |task| task.id);
    let stored: BTreeSet<TaskId> = tasks
        .iter()
        .map(|t| t.id)
        .filter(|id| !stand_in.contains_key(id))
        .collect();
    // The parents outside the call, with their states; every one must exist.
    let outside: BTreeSet<TaskId> = tasks
        .iter()
        .filter(|t| stored.contains(&t.id))
        .flat_map(|t| t.dependencies.iter().map(|d| resolve(d.parent)))
        .filter(|parent| !stored.contains(parent))
        .collect();
    let rows = sqlx::query(
        "SELECT id, status FROM orch_tasks WHERE id IN \
         (SELECT unhex(value) FROM json_each(?))",
    )
    .bind(ids_json(outside.iter().copied()))
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err(OP))?;
    let mut outside_status: HashMap<TaskId, TaskStatus> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let get = |e: sqlx::Error| corrupt(OP, e);
        let status: String = row.try_get("status").map_err(get)?;
        outside_status.insert(
            TaskId(row.try_get("id").map_err(get)?),
            status_of(OP, &status)?,
        );
    }
    for task in tasks.iter().filter(|t| stored.contains(&t.id)) {
        for dependency in &task.dependencies {
            let parent = resolve(dependency.parent);
            if !stored.contains(&parent) && !outside_status.contains_key(&parent) {
                return Err(rules::unknown_parent(task, dependency.parent));
            }
        }
    }
    let mut dependents: HashMap<TaskId, u32> = HashMap::new();
    let mut created = Vec::with_capacity(tasks.len());
    let mut rows = Vec::with_capacity(tasks.len());
    let mut edges = Vec::new();
    let mut events = Vec::with_capacity(tasks.len());
    let mut doomed = BTreeMap::new();
    let mut queued = false;
    for (step, mut new) in tasks.into_iter().enumerate() {
        if let Some(existing) = stand_in.get(&new.id) {
            created.push(Created {
                task: existing.clone(),
                created: false,
            });
            continue;
        }
        let mut waiting_for = 0u32;
        let mut doom: Option<Doom> = None;
        for (position, dependency) in new.dependencies.iter_mut().enumerate() {
            dependency.parent = resolve(dependency.parent);
            *dependents.entry(dependency.parent).or_default() += 1;
            let position = u32::try_from(position).unwrap_or(u32::MAX);
            edges.push((new.id, position, *dependency));
            let status = if stored.contains(&dependency.parent) {
                TaskStatus::Waiting
            } else {
                outside_status[&dependency.parent]
            };
            if let Some(ends) = counts(status, dependency, position) {
                waiting_for += 1;
                if doom.is_none() {
                    doom = ends;
                }
            }
        }
        new.dependencies.clear();
        let run_at = truncate_micros(rules::first_run_at(&new, now));
        let (task, event) = if waiting_for > 0 {
            rules::create_waiting(new, now, run_at, waiting_for)
        } else {
            queued = true;
            rules::create(new, now, run_at)
        };
        if let Some(doom) = doom {
            doomed.insert(task.id, doom);
        }
        events.push(event);
        rows.push((task.clone(), 0, workflow.as_ref().map(|_| step)));
        created.push(Created {
            task,
            created: true,
        });
    }
    for (task, count, _) in &mut rows {
        *count = dependents.get(&task.id).copied().unwrap_or_default();
    }
    insert_graph_rows(conn, &rows).await?;
    insert_dependencies(conn, &edges).await?;
    for (parent, added) in dependents
        .iter()
        .filter(|(parent, _)| !stored.contains(parent))
    {
        sqlx::query("UPDATE orch_tasks SET dependents = dependents + ? WHERE id = ?")
            .bind(i64::from(*added))
            .bind(parent.0)
            .execute(&mut *conn)
            .await
            .map_err(db_err(OP))?;
    }
    let workflow = match workflow {
        None => None,
        Some(workflow) => {
            let count = u32::try_from(rows.len()).unwrap_or(u32::MAX);
            let info = WorkflowInfo {
                id: workflow.id,
                status: WorkflowStatus::of(count, count, 0),
                idempotency_key: workflow.idempotency_key,
                tasks: count,
                unfinished: count,
                succeeded: 0,
                created_at: now,
                finished_at: (count == 0).then_some(now),
            };
            sqlx::query(
                "INSERT INTO orch_workflows (id, idempotency_key, status, tasks, unfinished, \
                 succeeded, created_at, finished_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
            )
            .bind(info.id.0)
            .bind(info.idempotency_key.as_deref())
            .bind(info.status.as_str())
            .bind(i64::from(count))
            .bind(i64::from(count))
            .bind(time_to_db(now))
            .bind(info.finished_at.map(time_to_db))
            .execute(&mut *conn)
            .await
            .map_err(db_err(OP))?;
            Some((info, true))
        }
    };
    let settled = settle(conn, OP, Vec::new(), doomed, now).await?;
    events.extend(settled.events);
    queued |= settled.released;
    if settled.touched {
        for c in created.iter_mut().filter(|c| c.created) {
            c.task = load(conn, OP, c.task.id).await?.0;
        }
    }
    let workflow = match workflow {
        Some((info, made)) if settled.touched => {
            Some((get_workflow(conn, OP, info.id).await?.unwrap_or(info), made))
        }
        other => other,
    };
    Ok(StoredGraph {
        created,
        workflow,
        events,
        queued,
    })
}

/// What [`settle`] did.
pub(super) struct Settled {
    /// Its events, in order.
    pub(super) events: Vec<NewEvent>,
    /// Whether a task was released.
    pub(super) released: bool,
    /// Whether it changed any task or workflow.
    pub(super) touched: bool,
}

/// Applies what the tasks that finished in this step (`ended`, in order) and the tasks
/// marked to end (`doomed`) mean for the tasks waiting for them, level by level, in the order
/// the backend contract gives; returns the events to append after the step's own.
pub(super) async fn settle(
    conn: &mut SqliteConnection,
    operation: &'static str,
    mut ended: Vec<TaskId>,
    mut doomed: BTreeMap<TaskId, Doom>,
    now: DateTime<Utc>,
) -> Result<Settled> {
    let mut settled = Settled {
        events: Vec::new(),
        released: false,
        touched: false,
    };
    loop {
        if !ended.is_empty() {
            let level = std::mem::take(&mut ended);
            after_level(conn, operation, &level, &mut doomed, now, &mut settled).await?;
            continue;
        }
        if doomed.is_empty() {
            return Ok(settled);
        }
        for (id, doom) in std::mem::take(&mut doomed) {
            let (mut task, mut lease) = load(conn, operation, id).await?;
            if task.status != TaskStatus::Waiting {
                continue;
            }
            let change = rules::dependency_failed(doom.parent, doom.parent_status, doom.to)?;
            apply(change, &mut task, &mut lease, now, &mut settled.events)?;
            save(conn, operation, &task, lease).await?;
            settled.touched = true;
            ended.push(id);
        }
    }
}

/// One level: the waiting children of `level` (ascending id) count their parents' ends, are
/// released or marked to end; then the workflows of `level` count them.
async fn after_level(
    conn: &mut SqliteConnection,
    operation: &'static str,
    level: &[TaskId],
    doomed: &mut BTreeMap<TaskId, Doom>,
    now: DateTime<Utc>,
    settled: &mut Settled,
) -> Result<()> {
    let level_json = ids_json(level.iter().copied());
    let rows = sqlx::query(sqlx::AssertSqlSafe(render(
        "SELECT d.child_id, d.parent_id, d.position, d.on_failure, p.status AS parent_status \
         FROM orch_task_deps d JOIN orch_tasks c ON c.id = d.child_id \
         JOIN orch_tasks p ON p.id = d.parent_id \
         WHERE d.parent_id IN (SELECT unhex(value) FROM json_each(?)) AND c.status = {waiting}",
    )))
    .bind(&level_json)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err(operation))?;
    let mut per_child: BTreeMap<TaskId, (u32, Option<Doom>)> = BTreeMap::new();
    for row in &rows {
        let get = |e: sqlx::Error| corrupt(operation, e);
        let on_failure: String = row.try_get("on_failure").map_err(get)?;
        let status: String = row.try_get("parent_status").map_err(get)?;
        let dependency = NewDependency {
            parent: TaskId(row.try_get("parent_id").map_err(get)?),
            on_failure: OnParentFailure::from_str(&on_failure)
                .map_err(|e| corrupt(operation, e))?,
        };
        let position = to_u32(operation, "position", row.try_get("position").map_err(get)?)?;
        let entry = per_child
            .entry(TaskId(row.try_get("child_id").map_err(get)?))
            .or_default();
        match counts(status_of(operation, &status)?, &dependency, position) {
            None => entry.0 += 1,
            Some(doom) => {
                if let Some(doom) = doom
                    && entry.1.is_none_or(|first| doom.position < first.position)
                {
                    entry.1 = Some(doom);
                }
            }
        }
    }
    for (child, (satisfied, doom)) in per_child {
        let (mut task, mut lease) = load(conn, operation, child).await?;
        task.waiting_for = task.waiting_for.saturating_sub(satisfied);
        if let Some(doom) = doom {
            doomed.entry(child).or_insert(doom);
        } else if task.waiting_for == 0 && !doomed.contains_key(&child) {
            apply(
                rules::release(),
                &mut task,
                &mut lease,
                now,
                &mut settled.events,
            )?;
            settled.released = true;
        }
        save(conn, operation, &task, lease).await?;
        settled.touched = true;
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(render(
        "SELECT workflow_id, count(*) AS ended, \
         sum(CASE WHEN status = {success.to} THEN 1 ELSE 0 END) AS succeeded \
         FROM orch_tasks WHERE id IN (SELECT unhex(value) FROM json_each(?)) \
         AND workflow_id IS NOT NULL GROUP BY workflow_id ORDER BY workflow_id",
    )))
    .bind(&level_json)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err(operation))?;
    for row in &rows {
        let get = |e: sqlx::Error| corrupt(operation, e);
        let workflow = WorkflowId(row.try_get("workflow_id").map_err(get)?);
        let ended: i64 = row.try_get("ended").map_err(get)?;
        let succeeded: i64 = row.try_get("succeeded").map_err(get)?;
        let counts: (i64, i64, i64) = sqlx::query_as(
            "UPDATE orch_workflows SET unfinished = max(unfinished - ?, 0), \
             succeeded = succeeded + ? WHERE id = ? RETURNING tasks, unfinished, succeeded",
        )
        .bind(ended)
        .bind(succeeded)
        .bind(workflow.0)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err(operation))?;
        settled.touched = true;
        let (tasks, unfinished, succeeded) = (
            to_u32(operation, "tasks", counts.0)?,
            to_u32(operation, "unfinished", counts.1)?,
            to_u32(operation, "succeeded", counts.2)?,
        );
        if unfinished > 0 {
            continue;
        }
        let status = WorkflowStatus::of(tasks, 0, succeeded);
        sqlx::query("UPDATE orch_workflows SET status = ?, finished_at = ? WHERE id = ?")
            .bind(status.as_str())
            .bind(time_to_db(now))
            .bind(workflow.0)
            .execute(&mut *conn)
            .await
            .map_err(db_err(operation))?;
        settled
            .events
            .extend(rules::workflow_ended(workflow, tasks, succeeded));
    }
    Ok(())
}

/// Cancels the workflow's tasks that have not run, in the caller's write transaction;
/// returns the events and whether a task was released.
pub(super) async fn cancel_workflow(
    conn: &mut SqliteConnection,
    id: WorkflowId,
    now: DateTime<Utc>,
) -> Result<(Vec<NewEvent>, bool)> {
    const OP: &str = "cancel_workflow";
    get_workflow(conn, OP, id)
        .await?
        .ok_or(Error::WorkflowNotFound(id))?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(render(
        "SELECT * FROM orch_tasks WHERE workflow_id = ? AND status IN ({queued}, {waiting}) \
         ORDER BY id",
    )))
    .bind(id.0)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err(OP))?;
    let mut events = Vec::with_capacity(rows.len());
    let mut ended = Vec::with_capacity(rows.len());
    for row in &rows {
        let (mut task, mut lease) = task_from_row(OP, row)?;
        let change = rules::cancel(task.id, task.status)?;
        apply(change, &mut task, &mut lease, now, &mut events)?;
        save(conn, OP, &task, lease).await?;
        ended.push(task.id);
    }
    let settled = settle(conn, OP, ended, BTreeMap::new(), now).await?;
    events.extend(settled.events);
    Ok((events, settled.released))
}

/// Reopens the workflow's unsuccessful tasks, in the caller's write transaction; returns the
/// events and whether a task became claimable.
pub(super) async fn retry_workflow(
    conn: &mut SqliteConnection,
    id: WorkflowId,
    now: DateTime<Utc>,
) -> Result<(Vec<NewEvent>, bool)> {
    const OP: &str = "retry_workflow";
    get_workflow(conn, OP, id)
        .await?
        .ok_or(Error::WorkflowNotFound(id))?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(render(
        "SELECT * FROM orch_tasks WHERE workflow_id = ? AND status IN ({unsuccessful}) \
         ORDER BY id",
    )))
    .bind(id.0)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err(OP))?;
    let mut reopening = Vec::with_capacity(rows.len());
    for row in &rows {
        reopening.push(task_from_row(OP, row)?);
    }
    let reopened: BTreeSet<TaskId> = reopening.iter().map(|(task, _)| task.id).collect();
    let mut events = Vec::with_capacity(reopening.len());
    let mut doomed = BTreeMap::new();
    let mut queued = false;
    for (mut task, mut lease) in reopening {
        let parents = list_parents(conn, task.id, 0, usize::MAX).await?;
        let mut waiting_for = 0u32;
        let mut doom = None;
        for parent in &parents {
            let status = if reopened.contains(&parent.task_id) {
                TaskStatus::Waiting
            } else {
                // A parent pruned meanwhile finished long ago: it counts as done.
                parent
                    .task
                    .as_ref()
                    .map_or(TaskStatus::Succeeded, |p| p.status)
            };
            let dependency = NewDependency {
                parent: parent.task_id,
                on_failure: parent.on_failure,
            };
            if let Some(ends) = counts(status, &dependency, parent.position) {
                waiting_for += 1;
                if doom.is_none() {
                    doom = ends;
                }
            }
        }
        let change = rules::reopen(task.id, task.status, waiting_for)?;
        queued |= change.to == TaskStatus::Queued;
        apply(change, &mut task, &mut lease, now, &mut events)?;
        task.waiting_for = waiting_for;
        save(conn, OP, &task, lease).await?;
        if let Some(doom) = doom {
            doomed.insert(task.id, doom);
        }
    }
    if !reopened.is_empty() {
        // A task waiting for a reopened task had counted its end: it waits for it again.
        let reopened_json = ids_json(reopened.iter().copied());
        sqlx::query(sqlx::AssertSqlSafe(render(
            "UPDATE orch_tasks SET waiting_for = waiting_for + (SELECT count(*) \
             FROM orch_task_deps d WHERE d.child_id = orch_tasks.id \
             AND d.parent_id IN (SELECT unhex(value) FROM json_each(?1))) \
             WHERE status = {waiting} AND id IN (SELECT d.child_id FROM orch_task_deps d \
             WHERE d.parent_id IN (SELECT unhex(value) FROM json_each(?1))) \
             AND id NOT IN (SELECT unhex(value) FROM json_each(?1))",
        )))
        .bind(&reopened_json)
        .execute(&mut *conn)
        .await
        .map_err(db_err(OP))?;
        sqlx::query(
            "UPDATE orch_workflows SET unfinished = unfinished + ?, status = 'running', \
             finished_at = NULL WHERE id = ?",
        )
        .bind(i64::try_from(reopened.len()).unwrap_or(i64::MAX))
        .bind(id.0)
        .execute(&mut *conn)
        .await
        .map_err(db_err(OP))?;
    }
    let settled = settle(conn, OP, Vec::new(), doomed, now).await?;
    events.extend(settled.events);
    Ok((events, queued || settled.released))
}

/// Deletes up to `limit` finished tasks outside workflows that no unfinished task depends on,
/// and finished workflows whole, that finished before `before`; returns how many tasks.
pub(super) async fn prune(
    conn: &mut SqliteConnection,
    before: DateTime<Utc>,
    limit: usize,
) -> Result<u64> {
    const OP: &str = "prune_tasks";
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let gone: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(render(
        "DELETE FROM orch_tasks WHERE id IN (SELECT id FROM orch_tasks t \
         WHERE finished_at IS NOT NULL AND finished_at < ? AND status IN ({terminal}) \
         AND workflow_id IS NULL AND (dependents = 0 OR NOT EXISTS (SELECT 1 \
         FROM orch_task_deps d JOIN orch_tasks c ON c.id = d.child_id \
         WHERE d.parent_id = t.id AND c.status NOT IN ({terminal}))) \
         ORDER BY finished_at, id LIMIT ?) RETURNING id",
    )))
    .bind(time_to_db(before))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err(OP))?;
    let mut pruned = gone.len() as u64;
    if !gone.is_empty() {
        sqlx::query(
            "DELETE FROM orch_task_deps WHERE child_id IN \
             (SELECT unhex(value) FROM json_each(?))",
        )
        .bind(ids_json(gone.into_iter().map(TaskId)))
        .execute(&mut *conn)
        .await
        .map_err(db_err(OP))?;
    }
    let workflows: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(render(
        "SELECT id FROM orch_workflows w WHERE finished_at IS NOT NULL AND finished_at < ? \
         AND status <> 'running' AND NOT EXISTS (SELECT 1 FROM orch_tasks m \
         JOIN orch_task_deps d ON d.parent_id = m.id JOIN orch_tasks c ON c.id = d.child_id \
         WHERE m.workflow_id = w.id AND m.dependents > 0 AND c.status NOT IN ({terminal})) \
         ORDER BY finished_at, id LIMIT ?",
    )))
    .bind(time_to_db(before))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err(OP))?;
    for workflow in workflows {
        sqlx::query(
            "DELETE FROM orch_task_deps WHERE child_id IN \
             (SELECT id FROM orch_tasks WHERE workflow_id = ?)",
        )
        .bind(workflow)
        .execute(&mut *conn)
        .await
        .map_err(db_err(OP))?;
        let done = sqlx::query("DELETE FROM orch_tasks WHERE workflow_id = ?")
            .bind(workflow)
            .execute(&mut *conn)
            .await
            .map_err(db_err(OP))?;
        pruned += done.rows_affected();
        sqlx::query("DELETE FROM orch_workflows WHERE id = ?")
            .bind(workflow)
            .execute(&mut *conn)
            .await
            .map_err(db_err(OP))?;
    }
    Ok(pruned)
}
