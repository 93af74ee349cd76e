//! Dependencies and workflows on PostgreSQL: a graph stored by one statement
//! ([`CREATE_GRAPH`]), a workflow's retry by one statement ([`RETRY_WORKFLOW`]), its cancel
//! through [`APPLY_CHANGES`](super::statements::APPLY_CHANGES), pruning graphs whole, and the
//! reads (a workflow, its tasks, a task's parents).
//!
//! Locks: a statement that locks parents it does not end ([`CREATE_GRAPH`]) takes them with
//! `SKIP LOCKED` and asks to be run again (40001) when one is busy, so it never waits for a row
//! while holding another; the others lock every task row they change in ascending id order,
//! then the workflow's row.

use std::collections::HashMap;
use std::str::FromStr;

use orch_core::backend::{NewTask, NewWorkflow, rules};
use orch_core::{
    Created, Error, OnParentFailure, ParentTask, Result, Task, TaskId, TaskStatus, WorkflowId,
    WorkflowInfo, WorkflowStatus, WorkflowTask,
};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::tasks::{Applied, Entry, TaskColumns, asks_to_rerun, rerun_pause};
use super::{PostgresBackend, task_from_row, tasks_from_rows};
use crate::common::{corrupt, db_err, from_micros, micros};
use crate::rule_sql::Rendered;

/// How many times a statement asking to be run again is, before the call fails.
const RERUNS: u32 = 40;

/// Stores a graph in one statement: the tasks of `$1` to `$12` (as `CREATE_TASKS` takes them,
/// and `$12` each task's workflow step), their dependencies `$13` to `$16` (child, position,
/// parent, on failure), in workflow `$17` with idempotency key `$18` when `$17` is not NULL;
/// `$19` is the notification payload; `$20` and `$21` the tasks' trace contexts.
///
/// A workflow whose key exists stores nothing (the row names it in `earlier`); a task whose
/// key exists is not stored, and stands in for its step as a parent. Parents outside the call
/// are locked with `SKIP LOCKED`, read (their state counts at once by the rules) and get their
/// `dependents` raised. Each task is stored waiting when a parent has not finished or ends it
/// (then also marked to end), else queued, with its event in input order.
///
/// Refuses an unknown parent (`OR001`, the message a JSON object naming the child and the
/// parent), and asks to be run again (40001) when a parent is busy, or a key was taken by a
/// statement this one's snapshot does not see. Returns at least one row: each stored task
/// (or NULLs), with the call's results on every row.
pub(super) static CREATE_GRAPH: Rendered = Rendered::new(concat!(
    "WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::int8[], $5::int4[],
                         $6::timestamptz[], $7::int8[], $8::text[], $9::text[], $10::text[],
                         $11::text[], $12::int4[], $20::text[], $21::text[])
        WITH ORDINALITY AS u(id, core_id, priority, timeout_us, max_attempts, not_before,
                             delay_us, payload, metadata, idempotency_key, locks, step,
                             traceparent, tracestate, ord)
), edge_in AS (
    SELECT * FROM unnest($13::uuid[], $14::int4[], $15::uuid[], $16::text[])
        AS e(child_id, position, parent_id, on_failure)
), earlier AS (
    SELECT id FROM orch_workflows WHERE $18::text IS NOT NULL AND idempotency_key = $18
), stood_in AS (
    SELECT i.id AS new_id, t.id AS existing_id FROM input i
    JOIN orch_tasks t ON t.idempotency_key = i.idempotency_key
    WHERE i.idempotency_key IS NOT NULL
), stored AS (
    SELECT i.* FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM stood_in s WHERE s.new_id = i.id)
        AND NOT EXISTS (SELECT 1 FROM earlier)
), edges AS (
    -- The dependencies of the tasks stored (every child is a task of the call).
    SELECT e.child_id, e.position, coalesce(s.existing_id, e.parent_id) AS parent_id,
           e.parent_id AS named_parent, e.on_failure
    FROM edge_in e
    LEFT JOIN stood_in s ON s.new_id = e.parent_id
    WHERE NOT EXISTS (SELECT 1 FROM earlier)
        AND NOT EXISTS (SELECT 1 FROM stood_in x WHERE x.new_id = e.child_id)
), outside AS (
    SELECT DISTINCT parent_id AS id FROM edges
    WHERE parent_id NOT IN (SELECT id FROM stored)
), parents AS MATERIALIZED (
    SELECT t.id, t.status FROM orch_tasks t WHERE t.id IN (SELECT id FROM outside)
    ORDER BY t.id
    FOR NO KEY UPDATE SKIP LOCKED
), missing AS (
    SELECT e.child_id, e.named_parent FROM edges e
    WHERE e.parent_id IN (SELECT id FROM outside)
        AND NOT EXISTS (SELECT 1 FROM orch_tasks t WHERE t.id = e.parent_id)
    ORDER BY e.child_id, e.position
    LIMIT 1
), edge_count AS (
    SELECT child_id, count(*) AS n FROM edges GROUP BY child_id
), outside_state AS (
    -- What the parents outside the call, already stored, mean at once: those finished in a
    -- way that lets the child run no longer hold it back; the first (in the child's order)
    -- whose failure ends it marks it.
    SELECT e.child_id,
        count(*) FILTER (WHERE p.status IN ({terminal})
            AND (p.status = {success.to} OR e.on_failure = {policy.run_anyway})) AS satisfied,
        (array_agg(jsonb_build_object(
             'parent', e.parent_id, 'status', p.status, 'position', e.position,
             'to', CASE WHEN e.on_failure = {policy.fail} THEN {ends.fail} ELSE {ends.cancel} END)
             ORDER BY e.position)
         FILTER (WHERE p.status IN ({terminal}) AND p.status <> {success.to}
             AND e.on_failure <> {policy.run_anyway}))[1] AS doom
    FROM edges e JOIN parents p ON p.id = e.parent_id
    GROUP BY e.child_id
), child_state AS (
    -- A child waits for each parent but those.
    SELECT c.child_id, c.n - coalesce(o.satisfied, 0) AS waiting_for, o.doom
    FROM edge_count c LEFT JOIN outside_state o ON o.child_id = c.child_id
), dependents AS (
    SELECT parent_id AS id, count(*) AS n FROM edges GROUP BY parent_id
), rows AS (
    SELECT s.id, s.core_id,
           CASE WHEN coalesce(c.waiting_for, 0) > 0 THEN {waiting} ELSE {created} END AS status,
           s.priority, s.timeout_us, s.max_attempts, 0 AS attempt,
           greatest(now() + s.delay_us * interval '1 microsecond', s.not_before) AS run_at,
           now() AS created_at, now() AS updated_at, s.payload::jsonb AS payload,
           s.metadata::jsonb AS metadata, s.idempotency_key,
           CASE WHEN s.locks = '[]' THEN '{}'::text[]
                ELSE ARRAY(SELECT jsonb_array_elements_text(s.locks::jsonb)) END AS locks,
           coalesce(c.waiting_for, 0)::int4 AS waiting_for,
           coalesce(d.n, 0)::int4 AS dependents, $17::uuid AS workflow_id,
           s.step AS workflow_step, c.doom, s.traceparent, s.tracestate, s.ord
    FROM stored s LEFT JOIN child_state c ON c.child_id = s.id
    LEFT JOIN dependents d ON d.id = s.id
), keyed AS (
    INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, attempt,
                            run_at, created_at, updated_at, payload, metadata, idempotency_key,
                            locks, waiting_for, dependents, workflow_id, workflow_step, doom,
                            traceparent, tracestate)
    SELECT id, core_id, status, priority, timeout_us, max_attempts, attempt, run_at,
           created_at, updated_at, payload, metadata, idempotency_key, locks, waiting_for,
           dependents, workflow_id, workflow_step, doom, traceparent, tracestate
    FROM rows WHERE idempotency_key IS NOT NULL ORDER BY ord
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, core_id, status, attempt, run_at, created_at, waiting_for, doom
), plain AS (
    INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, attempt,
                            run_at, created_at, updated_at, payload, metadata, idempotency_key,
                            locks, waiting_for, dependents, workflow_id, workflow_step, doom,
                            traceparent, tracestate)
    SELECT id, core_id, status, priority, timeout_us, max_attempts, attempt, run_at,
           created_at, updated_at, payload, metadata, idempotency_key, locks, waiting_for,
           dependents, workflow_id, workflow_step, doom, traceparent, tracestate
    FROM rows WHERE idempotency_key IS NULL ORDER BY ord
    RETURNING id, core_id, status, attempt, run_at, created_at, waiting_for, doom
), ins AS (
    SELECT * FROM keyed UNION ALL SELECT * FROM plain
), deps AS (
    INSERT INTO orch_task_deps (child_id, position, parent_id, on_failure)
    SELECT child_id, position, parent_id, on_failure FROM edges
), bump AS (
    UPDATE orch_tasks t SET dependents = t.dependents + d.n
    FROM dependents d JOIN parents p ON p.id = d.id
    WHERE t.id = d.id
), wf AS (
    INSERT INTO orch_workflows (id, idempotency_key, status, tasks, unfinished, succeeded,
                                created_at, finished_at)
    SELECT $17, $18, CASE WHEN n > 0 THEN 'running' ELSE 'succeeded' END, n, n, 0, now(),
           CASE WHEN n = 0 THEN now() END
    FROM (SELECT count(*)::int4 AS n FROM rows) AS c
    WHERE $17::uuid IS NOT NULL AND NOT EXISTS (SELECT 1 FROM earlier)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
), ev AS (
    ",
    insert_events!(
        "SELECT CASE WHEN ins.status = {waiting} THEN {waiting.event} ELSE {created.event} END
               AS kind, ins.id AS task_id, ins.core_id, ins.attempt, 'null'::jsonb AS data,
           row_number() OVER (ORDER BY input.ord) AS o
    FROM ins JOIN input ON input.id = ins.id"
    ),
    "
)
SELECT ins.id, ins.status, ins.run_at, ins.created_at, ins.waiting_for,
       ins.doom IS NOT NULL AS doomed,
       (SELECT orch_raise('OR001', jsonb_build_object('child', child_id,
                                                      'parent', named_parent)::text)
        FROM missing) AS unknown_parent,
       (SELECT orch_raise('40001', 'a parent is busy')
        WHERE (SELECT count(*) FROM parents) < (SELECT count(*) FROM outside)) AS busy,
       (SELECT orch_raise('40001', 'an idempotency key was taken meanwhile')
        WHERE (SELECT count(*) FROM ins) < (SELECT count(*) FROM rows)) AS keys_taken,
       (SELECT orch_raise('40001', 'the workflow key was taken meanwhile')
        WHERE $17::uuid IS NOT NULL AND NOT EXISTS (SELECT 1 FROM earlier)
            AND NOT EXISTS (SELECT 1 FROM wf)) AS workflow_taken,
       (SELECT id FROM earlier) AS earlier,
       (SELECT array_agg(new_id ORDER BY new_id) FROM stood_in) AS stood_in_new,
       (SELECT array_agg(existing_id ORDER BY new_id) FROM stood_in) AS stood_in_existing,
       (SELECT 1 FROM pg_notify('orch_changes', $19) WHERE EXISTS (SELECT 1 FROM ins))
           AS notified
FROM (SELECT 1) AS one LEFT JOIN ins ON true"
));

/// Reopens, in one statement, the tasks of workflow `$1` that failed, were cancelled or timed
/// out: each (ascending id) waits for its parents that are reopened with it or have not
/// finished (and is marked to end by a parent whose failure ends it), with `task.reopened`;
/// a waiting task that a reopened parent had let run anyway waits for it again (and loses a
/// mark that parent set); the workflow is running again. Locks the tasks, their parents and
/// their children in ascending id order, then the workflow. `$2` is the notification payload.
pub(super) static RETRY_WORKFLOW: Rendered = Rendered::new(concat!(
    "WITH targets AS (
    SELECT id FROM orch_tasks WHERE workflow_id = $1 AND status IN ({unsuccessful})
), tparents AS (
    SELECT DISTINCT d.parent_id AS id FROM orch_task_deps d
    WHERE d.child_id IN (SELECT id FROM targets)
), tkids AS (
    SELECT DISTINCT d.child_id AS id FROM orch_task_deps d
    WHERE d.parent_id IN (SELECT id FROM targets)
), locked AS MATERIALIZED (
    SELECT t.id, t.status FROM orch_tasks t
    WHERE t.id IN (SELECT id FROM targets UNION SELECT id FROM tparents
                   UNION SELECT id FROM tkids)
    ORDER BY t.id
    FOR UPDATE
), reopen AS (
    SELECT l.id, l.status AS from_status FROM locked l
    WHERE l.id IN (SELECT id FROM targets) AND l.status IN ({unsuccessful})
), counts AS (
    SELECT d.child_id,
        count(*) FILTER (WHERE d.parent_id IN (SELECT id FROM reopen)
            OR coalesce(p.status, {success.to}) NOT IN ({terminal})
            OR (coalesce(p.status, {success.to}) <> {success.to}
                AND d.on_failure <> {policy.run_anyway})) AS waiting_for,
        (array_agg(jsonb_build_object(
             'parent', d.parent_id, 'status', p.status, 'position', d.position,
             'to', CASE WHEN d.on_failure = {policy.fail} THEN {ends.fail} ELSE {ends.cancel} END)
             ORDER BY d.position)
         FILTER (WHERE d.parent_id NOT IN (SELECT id FROM reopen)
             AND p.status IN ({unsuccessful}) AND d.on_failure <> {policy.run_anyway}))[1]
            AS doom
    FROM orch_task_deps d JOIN reopen r ON r.id = d.child_id
    LEFT JOIN locked p ON p.id = d.parent_id
    GROUP BY d.child_id
), re AS (
    UPDATE orch_tasks t SET
        status = CASE WHEN coalesce(c.waiting_for, 0) > 0 THEN {waiting} ELSE {queued} END,
        attempt = 0, run_at = now(), updated_at = now(), finished_at = NULL,
        result = NULL, error = NULL,
        lease_token = NULL, lease_expires_at = NULL,
        waiting_for = coalesce(c.waiting_for, 0), doom = c.doom
    FROM reopen r LEFT JOIN counts c ON c.child_id = r.id
    WHERE t.id = r.id
    RETURNING t.id, t.core_id, t.attempt, t.status, r.from_status, t.doom IS NOT NULL AS doomed
), again AS (
    UPDATE orch_tasks t SET
        waiting_for = t.waiting_for + k.n,
        doom = CASE WHEN (t.doom ->> 'parent')::uuid IN (SELECT id FROM reopen) THEN NULL
                    ELSE t.doom END
    FROM (
        SELECT d.child_id, count(*) FILTER (WHERE d.on_failure = {policy.run_anyway}) AS n
        FROM orch_task_deps d
        WHERE d.parent_id IN (SELECT id FROM reopen)
            AND d.child_id NOT IN (SELECT id FROM reopen)
        GROUP BY d.child_id
    ) AS k JOIN locked l ON l.id = k.child_id
    WHERE t.id = k.child_id AND l.status = {waiting}
), wf AS (
    UPDATE orch_workflows SET unfinished = unfinished + (SELECT count(*) FROM reopen)::int4,
        status = 'running', finished_at = NULL
    WHERE id = $1 AND EXISTS (SELECT 1 FROM reopen)
), ev AS (
    ",
    insert_events!(
        "SELECT {reopen.event} AS kind, re.id AS task_id, re.core_id, re.attempt,
           jsonb_build_object('from', re.from_status) AS data,
           row_number() OVER (ORDER BY re.id) AS o
    FROM re"
    ),
    "
)
SELECT (SELECT count(*) FROM re) AS reopened,
       (SELECT count(*) FROM re WHERE doomed) AS doomed,
       (SELECT count(*) FROM re WHERE status = {queued}) AS queued,
       (SELECT 1 FROM pg_notify('orch_changes', $2) WHERE EXISTS (SELECT 1 FROM re))
           AS notified"
));

/// Deletes up to `$2` finished tasks outside workflows that finished before `$1` and that no
/// unfinished task depends on, with their dependency rows; returns how many tasks. Never
/// waits for a row.
static PRUNE_TASKS: Rendered = Rendered::new(
    "WITH picked AS (
    SELECT id FROM orch_tasks t
    WHERE finished_at < $1 AND status IN ({terminal}) AND workflow_id IS NULL
        AND (dependents = 0 OR NOT EXISTS (
            SELECT 1 FROM orch_task_deps d JOIN orch_tasks c ON c.id = d.child_id
            WHERE d.parent_id = t.id AND c.status NOT IN ({terminal})))
    ORDER BY finished_at, id LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM orch_tasks USING picked WHERE orch_tasks.id = picked.id
    RETURNING orch_tasks.id
), deps AS (
    DELETE FROM orch_task_deps WHERE child_id IN (SELECT id FROM gone)
)
SELECT count(*) FROM gone",
);

/// Deletes up to `$2` workflows that finished before `$1`, each whole with its tasks and
/// their dependency rows, unless a task outside it that has not finished depends on one of
/// them; a workflow with a task another statement holds is left for the next pass. Returns
/// how many tasks. Never waits for a row.
static PRUNE_WORKFLOWS: Rendered = Rendered::new(
    "WITH picked AS (
    SELECT id FROM orch_workflows w
    WHERE finished_at < $1 AND status <> 'running' AND NOT EXISTS (
        SELECT 1 FROM orch_tasks m JOIN orch_task_deps d ON d.parent_id = m.id
        JOIN orch_tasks c ON c.id = d.child_id
        WHERE m.workflow_id = w.id AND m.dependents > 0 AND c.status NOT IN ({terminal}))
    ORDER BY finished_at, id LIMIT $2
    FOR UPDATE SKIP LOCKED
), members AS MATERIALIZED (
    SELECT t.id, t.workflow_id FROM orch_tasks t
    WHERE t.workflow_id IN (SELECT id FROM picked)
    ORDER BY t.id
    FOR UPDATE SKIP LOCKED
), whole AS (
    SELECT p.id FROM picked p WHERE NOT EXISTS (
        SELECT 1 FROM orch_tasks t WHERE t.workflow_id = p.id
            AND t.id NOT IN (SELECT id FROM members))
), gone AS (
    DELETE FROM orch_tasks t USING members m
    WHERE t.id = m.id AND m.workflow_id IN (SELECT id FROM whole)
    RETURNING t.id
), deps AS (
    DELETE FROM orch_task_deps WHERE child_id IN (SELECT id FROM gone)
), flows AS (
    DELETE FROM orch_workflows WHERE id IN (SELECT id FROM whole)
)
SELECT count(*) FROM gone",
);

fn workflow_from_row(operation: &'static str, row: &PgRow) -> Result<WorkflowInfo> {
    let get = |e: sqlx::Error| corrupt(operation, e);
    let status: String = row.try_get("status").map_err(get)?;
    let count = |name: &str| -> Result<u32> {
        let value: i32 = row.try_get(name).map_err(get)?;
        u32::try_from(value).map_err(|_| corrupt(operation, format!("{name} = {value}")))
    };
    Ok(WorkflowInfo {
        id: WorkflowId(row.try_get("id").map_err(get)?),
        status: WorkflowStatus::from_str(&status).map_err(|e| corrupt(operation, e))?,
        idempotency_key: row.try_get("idempotency_key").map_err(get)?,
        tasks: count("tasks")?,
        unfinished: count("unfinished")?,
        succeeded: count("succeeded")?,
        created_at: row.try_get("created_at").map_err(get)?,
        finished_at: row.try_get("finished_at").map_err(get)?,
    })
}

/// What [`PostgresBackend::insert_graph`] stored.
pub(super) struct StoredGraph {
    pub(super) created: Vec<Created>,
    /// The workflow, and whether this call created it.
    pub(super) workflow: Option<(WorkflowInfo, bool)>,
    /// Whether some task stored is marked to end.
    pub(super) doomed: bool,
    /// Whether a task was stored.
    pub(super) stored: bool,
}

impl PostgresBackend {
    /// Stores a graph (tasks with dependencies, or a workflow's) by [`CREATE_GRAPH`] on
    /// `conn`, notifying with `payload`, run again while it asks to be when `rerun` (never
    /// inside a caller's transaction, which a refused statement aborts).
    pub(super) async fn insert_graph(
        &self,
        conn: &mut PgConnection,
        tasks: Vec<NewTask>,
        workflow: Option<NewWorkflow>,
        rerun: bool,
        payload: String,
    ) -> Result<StoredGraph> {
        const OP: &str = "create_tasks";
        let columns = TaskColumns::of(&tasks)?;
        let mut steps = Vec::with_capacity(tasks.len());
        let (mut children, mut positions, mut parents, mut policies) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (step, task) in tasks.iter().enumerate() {
            steps.push(
                workflow
                    .as_ref()
                    .map(|_| i32::try_from(step).unwrap_or(i32::MAX)),
            );
            for (position, dependency) in task.dependencies.iter().enumerate() {
                children.push(task.id.0);
                positions.push(i32::try_from(position).unwrap_or(i32::MAX));
                parents.push(dependency.parent.0);
                policies.push(dependency.on_failure.as_str());
            }
        }
        let workflow_id = workflow.as_ref().map(|w| w.id.0);
        let workflow_key = workflow.as_ref().and_then(|w| w.idempotency_key.as_deref());
        let mut reruns = 0;
        let rows = loop {
            let attempt = columns
                .bind(sqlx::query(CREATE_GRAPH.sql()))
                .bind(&steps)
                .bind(&children)
                .bind(&positions)
                .bind(&parents)
                .bind(&policies)
                .bind(workflow_id)
                .bind(workflow_key)
                .bind(&payload)
                .bind(&columns.traceparents)
                .bind(&columns.tracestates)
                .fetch_all(&mut *conn)
                .await;
            match attempt {
                Ok(rows) => break rows,
                Err(error) if rerun && asks_to_rerun(&error) && reruns < RERUNS => {
                    reruns += 1;
                    tokio::time::sleep(rerun_pause(reruns)).await;
                }
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("OR001") => {
                    let named: Value = serde_json::from_str(db.message())?;
                    let child = named["child"].as_str().and_then(|s| s.parse().ok());
                    let parent = named["parent"].as_str().and_then(|s| s.parse().ok());
                    let child = tasks.iter().find(|t| Some(t.id.0) == child);
                    return Err(match (child, parent) {
                        (Some(child), Some(parent)) => rules::unknown_parent(child, TaskId(parent)),
                        _ => corrupt(OP, db.message()),
                    });
                }
                Err(error) => return Err(db_err(OP)(error)),
            }
        };
        let first = rows.first().ok_or_else(|| corrupt(OP, "no answer"))?;
        let get = |e: sqlx::Error| corrupt(OP, e);
        if let Some(earlier) = first.try_get::<Option<Uuid>, _>("earlier").map_err(get)? {
            let earlier = WorkflowId(earlier);
            let info = self
                .workflow_info_on(conn, OP, earlier)
                .await?
                .ok_or_else(|| corrupt(OP, "a workflow vanished"))?;
            let created = self
                .members_on(conn, OP, earlier)
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
                doomed: false,
                stored: false,
            });
        }
        let stood_new: Option<Vec<Uuid>> = first.try_get("stood_in_new").map_err(get)?;
        let stood_existing: Option<Vec<Uuid>> = first.try_get("stood_in_existing").map_err(get)?;
        let stood_in: HashMap<Uuid, Uuid> = stood_new
            .unwrap_or_default()
            .into_iter()
            .zip(stood_existing.unwrap_or_default())
            .collect();
        let mut inserted = HashMap::with_capacity(rows.len());
        let mut doomed = false;
        for row in &rows {
            let Some(id) = row.try_get::<Option<Uuid>, _>("id").map_err(get)? else {
                continue;
            };
            let status: String = row.try_get("status").map_err(get)?;
            let waiting_for: i32 = row.try_get("waiting_for").map_err(get)?;
            doomed |= row.try_get::<bool, _>("doomed").map_err(get)?;
            inserted.insert(
                id,
                (
                    status,
                    row.try_get::<chrono::DateTime<chrono::Utc>, _>("run_at")
                        .map_err(get)?,
                    row.try_get::<chrono::DateTime<chrono::Utc>, _>("created_at")
                        .map_err(get)?,
                    u32::try_from(waiting_for).unwrap_or_default(),
                ),
            );
        }
        let existing: Vec<Uuid> = stood_in.values().copied().collect();
        let existing: HashMap<Uuid, Task> = if existing.is_empty() {
            HashMap::new()
        } else {
            let rows = sqlx::query("SELECT * FROM orch_tasks WHERE id = ANY($1)")
                .bind(&existing)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_err(OP))?;
            tasks_from_rows(OP, &rows)?
                .into_iter()
                .map(|task| (task.id.0, task))
                .collect()
        };
        let stored = !inserted.is_empty();
        let mut created = Vec::with_capacity(tasks.len());
        for mut new in tasks {
            if let Some((status, run_at, created_at, waiting_for)) = inserted.remove(&new.id.0) {
                new.timeout = from_micros(micros(new.timeout));
                new.dependencies = Vec::new();
                let (task, _) = if status == rules::WAITING.as_str() {
                    rules::create_waiting(new, created_at, run_at, waiting_for)
                } else {
                    rules::create(new, created_at, run_at)
                };
                created.push(Created {
                    task,
                    created: true,
                });
                continue;
            }
            let task = stood_in
                .get(&new.id.0)
                .and_then(|id| existing.get(id))
                .ok_or_else(|| {
                    Error::backend(OP, format!("task {} was neither stored nor found", new.id))
                })?;
            created.push(Created {
                task: task.clone(),
                created: false,
            });
        }
        let workflow = match workflow {
            None => None,
            Some(workflow) => {
                let count =
                    u32::try_from(created.iter().filter(|c| c.created).count()).unwrap_or(u32::MAX);
                let created_at = created
                    .iter()
                    .find(|c| c.created)
                    .map_or_else(chrono::Utc::now, |c| c.task.created_at);
                Some((
                    WorkflowInfo {
                        id: workflow.id,
                        status: WorkflowStatus::of(count, count, 0),
                        idempotency_key: workflow.idempotency_key,
                        tasks: count,
                        unfinished: count,
                        succeeded: 0,
                        created_at,
                        finished_at: (count == 0).then_some(created_at),
                    },
                    true,
                ))
            }
        };
        Ok(StoredGraph {
            created,
            workflow,
            doomed,
            stored,
        })
    }

    /// The workflow, read on `conn`.
    pub(super) async fn workflow_info_on(
        &self,
        conn: &mut PgConnection,
        operation: &'static str,
        id: WorkflowId,
    ) -> Result<Option<WorkflowInfo>> {
        let row = sqlx::query("SELECT * FROM orch_workflows WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err(operation))?;
        row.map(|row| workflow_from_row(operation, &row))
            .transpose()
    }

    /// The workflow's tasks in step order, read on `conn`.
    pub(super) async fn members_on(
        &self,
        conn: &mut PgConnection,
        operation: &'static str,
        id: WorkflowId,
    ) -> Result<Vec<(usize, Task)>> {
        let rows =
            sqlx::query("SELECT * FROM orch_tasks WHERE workflow_id = $1 ORDER BY workflow_step")
                .bind(id.0)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_err(operation))?;
        rows.iter()
            .map(|row| {
                let step: Option<i32> = row
                    .try_get("workflow_step")
                    .map_err(|e| corrupt(operation, e))?;
                let (task, _) = task_from_row(operation, row)?;
                Ok((
                    step.and_then(|s| usize::try_from(s).ok())
                        .unwrap_or_default(),
                    task,
                ))
            })
            .collect()
    }

    /// The workflow's tasks with their dependencies, in step order.
    pub(super) async fn workflow_graph(&self, id: WorkflowId) -> Result<Vec<WorkflowTask>> {
        const OP: &str = "workflow_tasks";
        let mut conn = self.pool.acquire().await.map_err(db_err(OP))?;
        let tasks = self.members_on(&mut conn, OP, id).await?;
        let edges = sqlx::query_as(
            "SELECT d.child_id, d.parent_id, d.on_failure FROM orch_task_deps d \
             WHERE d.child_id IN (SELECT id FROM orch_tasks WHERE workflow_id = $1) \
             ORDER BY d.child_id, d.position",
        )
        .bind(id.0)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(OP))?;
        crate::common::workflow_tasks_of(OP, tasks, edges)
    }

    /// Up to `limit` parents of `child` from position `from`.
    pub(super) async fn parents_of(
        &self,
        child: TaskId,
        from: u32,
        limit: usize,
    ) -> Result<Vec<ParentTask>> {
        const OP: &str = "list_parents";
        let rows = sqlx::query(
            "SELECT d.position AS dep_position, d.parent_id AS dep_parent, \
             d.on_failure AS dep_on_failure, t.* FROM orch_task_deps d \
             LEFT JOIN orch_tasks t ON t.id = d.parent_id \
             WHERE d.child_id = $1 AND d.position >= $2 ORDER BY d.position LIMIT $3",
        )
        .bind(child.0)
        .bind(i32::try_from(from).unwrap_or(i32::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err(OP))?;
        rows.iter()
            .map(|row| {
                let get = |e: sqlx::Error| corrupt(OP, e);
                let position: i32 = row.try_get("dep_position").map_err(get)?;
                let on_failure: String = row.try_get("dep_on_failure").map_err(get)?;
                let exists: Option<Uuid> = row.try_get("id").map_err(get)?;
                Ok(ParentTask {
                    position: u32::try_from(position).map_err(|_| corrupt(OP, "position"))?,
                    task_id: TaskId(row.try_get("dep_parent").map_err(get)?),
                    on_failure: OnParentFailure::from_str(&on_failure)
                        .map_err(|e| corrupt(OP, e))?,
                    task: match exists {
                        Some(_) => Some(task_from_row(OP, row)?.0),
                        None => None,
                    },
                })
            })
            .collect()
    }

    /// Cancels the workflow's tasks that have not run: every queued or waiting task read, by
    /// [`rules::cancel`] through one [`APPLY_CHANGES`](super::statements::APPLY_CHANGES)
    /// (ascending id), read again while a task changed in between (released meanwhile, say).
    pub(super) async fn cancel_flow(&self, id: WorkflowId) -> Result<WorkflowInfo> {
        const OP: &str = "cancel_workflow";
        static NOT_RUN: Rendered = Rendered::new(
            "SELECT id, status FROM orch_tasks WHERE workflow_id = $1 \
             AND status IN ({queued}, {waiting}) ORDER BY id",
        );
        const TRIES: usize = 20;
        for _ in 0..TRIES {
            let rows = sqlx::query(NOT_RUN.sql())
                .bind(id.0)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err(OP))?;
            let mut entries = Vec::with_capacity(rows.len());
            for row in &rows {
                let get = |e: sqlx::Error| corrupt(OP, e);
                let task = TaskId(row.try_get("id").map_err(get)?);
                let status: String = row.try_get("status").map_err(get)?;
                let status: TaskStatus = status.parse().map_err(|e| corrupt(OP, e))?;
                entries.push(Entry::on(task, rules::cancel(task, status)?));
            }
            let applied = self.apply_changes(OP, &self.pool, entries).await?;
            if !applied
                .iter()
                .any(|a| matches!(a, Applied::Refused { exists: true }))
            {
                break;
            }
        }
        let mut conn = self.pool.acquire().await.map_err(db_err(OP))?;
        self.workflow_info_on(&mut conn, OP, id)
            .await?
            .ok_or(Error::WorkflowNotFound(id))
    }

    /// Reopens the workflow's unsuccessful tasks by [`RETRY_WORKFLOW`], then ends the ones it
    /// marked.
    pub(super) async fn retry_flow(&self, id: WorkflowId) -> Result<WorkflowInfo> {
        const OP: &str = "retry_workflow";
        let mut conn = self.pool.acquire().await.map_err(db_err(OP))?;
        let info = self.workflow_info_on(&mut conn, OP, id).await?;
        if info.is_none() {
            return Err(Error::WorkflowNotFound(id));
        }
        let payload = self.notify_payload(true);
        let mut reruns = 0;
        let row = loop {
            let attempt = sqlx::query(RETRY_WORKFLOW.sql())
                .bind(id.0)
                .bind(&payload)
                .fetch_one(&mut *conn)
                .await;
            match attempt {
                Ok(row) => break row,
                Err(error) if asks_to_rerun(&error) && reruns < RERUNS => {
                    reruns += 1;
                    tokio::time::sleep(rerun_pause(reruns)).await;
                }
                Err(error) => return Err(db_err(OP)(error)),
            }
        };
        let get = |e: sqlx::Error| corrupt(OP, e);
        let reopened: i64 = row.try_get("reopened").map_err(get)?;
        let doomed: i64 = row.try_get("doomed").map_err(get)?;
        let queued: i64 = row.try_get("queued").map_err(get)?;
        if reopened > 0 {
            self.wake_events();
        }
        if queued > 0 {
            self.claim_floors.clear();
            self.wake_tasks();
        }
        drop(conn);
        if doomed > 0 {
            self.settle(OP, &self.pool, usize::MAX).await?;
        }
        let mut conn = self.pool.acquire().await.map_err(db_err(OP))?;
        self.workflow_info_on(&mut conn, OP, id)
            .await?
            .ok_or(Error::WorkflowNotFound(id))
    }

    /// [`TaskStore::prune_tasks`](orch_core::backend::TaskStore::prune_tasks): tasks outside
    /// workflows, then workflows whole.
    pub(super) async fn prune(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<u64> {
        const OP: &str = "prune_tasks";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let tasks: i64 = sqlx::query_scalar(PRUNE_TASKS.sql())
            .bind(before)
            .bind(limit)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err(OP))?;
        let workflows: i64 = sqlx::query_scalar(PRUNE_WORKFLOWS.sql())
            .bind(before)
            .bind(limit)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err(OP))?;
        Ok(u64::try_from(tasks + workflows).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every statement written with rule placeholders renders.
    #[test]
    fn every_statement_follows_the_rules() {
        for statement in [
            &CREATE_GRAPH,
            &RETRY_WORKFLOW,
            &PRUNE_TASKS,
            &PRUNE_WORKFLOWS,
        ] {
            let sql = statement.sql();
            let left = sql
                .match_indices('{')
                .any(|(at, _)| sql[at + 1..].starts_with(|c: char| c.is_ascii_lowercase()));
            assert!(!left, "{sql}");
        }
    }
}
